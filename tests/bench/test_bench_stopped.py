"""A bench run that stops early (an error, Ctrl-C, SIGTERM, a kill) leaves a report that says so,
in report.md, report.html and results.json, naming the experiments that did not run."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import gradwatch.bench.__main__ as cli
from gradwatch.bench import EXPERIMENTS, run_bench
from gradwatch.bench.common import Claim, ExperimentResult
from gradwatch.bench.writeup import PARTIAL_BANNER

REPO = Path(__file__).resolve().parents[2]


def _ok(name: str):
    def run(ctx):
        return ExperimentResult(name, name.title(), claims=[Claim("c", "s", "m", True, "v")])
    return run


@pytest.fixture
def fakes(monkeypatch):
    """Three instant experiments; the third is set per test."""
    monkeypatch.setitem(EXPERIMENTS, "fake_a", ("a", _ok("fake_a")))
    monkeypatch.setitem(EXPERIMENTS, "fake_b", ("b", _ok("fake_b")))
    monkeypatch.setattr(cli, "NO_DATA", frozenset({"fake_a", "fake_b", "fake_c"}))
    return lambda run: monkeypatch.setitem(EXPERIMENTS, "fake_c", ("c", run))


def test_a_killed_run_leaves_the_not_run_banner(tmp_path, fakes):
    def killed(ctx):  # what SIGKILL / the OOM killer leaves: the last report written
        raise SystemExit("killed")

    fakes(killed)
    with pytest.raises(SystemExit):
        run_bench(["fake_a", "fake_b", "fake_c"], out=tmp_path, threads=1, figures=False)
    banner = f"{PARTIAL_BANNER} 2 of 3 experiments finished; not run: fake_c."
    assert (tmp_path / "report.md").read_text().split("\n")[2] == banner
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["partial"] == banner[
        len(PARTIAL_BANNER) + 1:]
    assert "<blockquote><b>Partial report.</b> 2 of 3" in (tmp_path / "report.html").read_text()


def test_a_finished_run_has_no_banner(tmp_path, fakes):
    fakes(_ok("fake_c"))
    md, js = run_bench(["fake_a", "fake_b", "fake_c"], out=tmp_path, threads=1, figures=False)
    assert PARTIAL_BANNER not in md.read_text() and json.loads(js.read_text())["meta"][
        "partial"] is None


def test_ctrl_c_marks_markdown_html_and_json_with_what_did_not_run(tmp_path, fakes, capsys):
    def interrupted(ctx):
        raise KeyboardInterrupt

    fakes(interrupted)
    out = tmp_path / "r"
    assert cli.main(["fake_a", "fake_b", "fake_c", "--out", str(out), "--threads", "1"]) == 130
    md = (out / "report.md").read_text().split("\n")
    assert md[2] == f"{PARTIAL_BANNER} The run stopped early: interrupted (Ctrl-C)"
    assert md[4] == f"{PARTIAL_BANNER} 2 of 3 experiments finished; not run: fake_c."
    page = (out / "report.html").read_text()
    assert "The run stopped early: interrupted (Ctrl-C)" in page and "not run: fake_c" in page
    partial = json.loads((out / "results.json").read_text())["meta"]["partial"]
    assert partial == "stopped early: interrupted (Ctrl-C); 2 of 3 experiments finished; " \
                      "not run: fake_c."


SIGTERM_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import gradwatch.bench.__main__ as cli
    from gradwatch.bench import EXPERIMENTS
    from gradwatch.bench.common import ExperimentResult
    def ok(ctx):
        return ExperimentResult("fake_a", "A")
    def term(ctx):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the experiment")
    EXPERIMENTS["fake_a"] = ("a", ok)
    EXPERIMENTS["fake_t"] = ("t", term)
    cli.NO_DATA = frozenset({"fake_a", "fake_t"})
    sys.exit(cli.main(["fake_a", "fake_t", "--out", sys.argv[1], "--threads", "1"]))
""")


def test_sigterm_stops_like_ctrl_c(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.run([sys.executable, "-c", SIGTERM_SCRIPT, str(out)], capture_output=True,
                          text=True, timeout=60, cwd=REPO)
    assert proc.returncode == 143, proc.stderr[-2000:]
    err = [ln for ln in proc.stderr.strip().split("\n") if not ln.startswith("[gradwatch")]
    assert len(err) == 1 and err[0].startswith("error: terminated (SIGTERM)"), proc.stderr
    md = (out / "report.md").read_text()
    assert f"{PARTIAL_BANNER} The run stopped early: terminated (SIGTERM)" in md
    assert "1 of 2 experiments finished; not run: fake_t." in md
