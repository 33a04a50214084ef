"""gradwatch.io.report text and the ``python -m gradwatch report`` command on good and bad logs."""

from __future__ import annotations

import base64
import inspect
import io
import math
import re
import shutil
import statistics
import subprocess
import sys
import uuid
import warnings

import pytest
import torch

import gradwatch
import gradwatch.plot
import gradwatch.io.report
from gradwatch import GradWatch, JsonlLogger
from gradwatch.io.cli import DEFAULT_ROOT, main
from gradwatch.io.loggers import read_runs
from gradwatch.record.records import LayerStat, Status, StepRecord
from gradwatch.io.report import findings, html_report, layer_table, markdown_report, run_overview

NAN = float("nan")
TOTALS = [3.0, 0.5, 4.0, NAN, 2.0, 1.0]


def _records() -> list[StepRecord]:
    """Six steps: clipped at 3.0 and 4.0, NaN born in "fc2" at step 3, a spike at step 2."""
    out = []
    for step, total in enumerate(TOTALS):
        bad = not math.isfinite(total)
        layers = {
            "fc1": LayerStat(norm=NAN if bad else 1e-9 * (step + 1), act_norm=0.1 * (step + 1),
                             status=Status.NONFINITE if bad else Status.VANISHING),
            "fc2": LayerStat(norm=NAN if bad else total / 2, act_norm=None,
                             status=Status.NONFINITE if bad else Status.OK, spike=step == 2),
        }
        out.append(StepRecord(step=step, total_norm=total,
                              clip_coef=0.0 if bad else min(1.0, 2.0 / total), layers=layers,
                              first_nonfinite="fc2" if bad else None, spike=step == 2,
                              skipped=bad))
    return out


def _write_log(path, records) -> None:
    with JsonlLogger(path) as log:
        for r in records:
            log(r)


# -------------------------------------------------------------------------------- report text
def test_run_overview_numbers():
    rows = dict(run_overview(_records()))
    finite = [t for t in TOTALS if math.isfinite(t)]
    assert rows["recorded steps"] == "6 (steps 0 .. 5)"
    assert rows["total norm (finite steps)"] == (
        f"min {min(finite):.3g} · median {statistics.median(finite):.3g} · max {max(finite):.3g}"
        f" ({len(finite)} of 6 steps finite)")  # the NaN step is left out, and said so
    # clipped: 3.0 and 4.0 (coef 2/total), and the NaN step (coef 0)
    assert rows["clipped steps"].startswith("3 of 6 (50.0%)")
    assert rows["steps with non-finite gradients"] == "1 (step 3)"
    assert rows["skipped optimizer steps"] == "1"
    assert rows["where NaN/Inf was born (first_nonfinite)"] == "`fc2` ×1 (first at step 3)"
    assert rows["spikes in total norm"] == "1 (step 2)"
    assert rows["layer spikes"] == "1"


def test_layer_table_rows():
    header, rows = layer_table(_records())
    table = {row[1]: dict(zip(header, row)) for row in rows}
    assert [row[1] for row in rows] == ["fc1", "fc2"]
    fc1, fc2 = table["fc1"], table["fc2"]
    assert fc1["last norm"] == f"{6e-9:.3g}"
    # over the 5 finite of the 6 records (step 3 is NaN), and the cell says so
    assert fc1["median norm"] == f"{statistics.median([1e-9, 2e-9, 3e-9, 5e-9, 6e-9]):.3g} (5/6)"
    assert fc1["median act norm"] == f"{statistics.median([0.1 * k for k in range(1, 7)]):.3g}"
    assert (fc1["vanishing"], fc1["exploding"], fc1["non-finite"]) == ("5", "0", "1")
    assert fc2["max norm"] == "2 (5/6)" and fc2["median act norm"] == "–"
    assert (fc2["vanishing"], fc2["non-finite"], fc2["spikes"]) == ("0", "1", "1")


def test_findings_name_the_problems_worst_first():
    lines = findings(_records())
    assert lines[0] == "Non-finite gradients at 1 of 6 steps; first at step 3, born in `fc2`."
    assert "`fc1` (5/6 steps)" in lines[1] and "vanishing" in lines[1]
    healthy = [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=1.0)})]
    assert findings(healthy) == [
        "No layer was flagged, no gradient went non-finite, no spike, no clipping."]


def test_amp_overflows_are_their_own_row_and_finding():
    """Steps a GradScaler skipped on overflow are not non-finite gradients of the model: the
    overview gives them their own row (not 'of which' under a count of 0), and the findings
    say so instead of 'no gradient went non-finite'."""
    recs = [StepRecord(step=k, total_norm=math.inf if k % 3 == 0 else 1.0,
                       amp_overflow=k % 3 == 0, layers={"a": LayerStat(norm=1.0)})
            for k in range(6)]
    rows = dict(run_overview(recs))
    assert rows["steps with non-finite gradients"] == "0"
    assert rows["AMP loss-scale overflows (steps the GradScaler skipped; not counted above)"] == "2"
    assert findings(recs) == ["AMP loss-scale overflows at 2 of 6 steps (the GradScaler skipped "
                              "them and lowered its scale)."]


def test_markdown_and_html_reports():
    md = markdown_report(_records(), title="T", images={"Flow": "flow.png"})
    assert md.startswith("# T\n") and "![Flow](flow.png)" in md
    # norms total/2; the NaN step is left out of median and max, and the cells say so
    assert "| 1 | fc2 | 0.5 | 1 (5/6) | 2 (5/6) | – | 0 | 0 | 1 | 1 |" in md
    png = b"\x89PNG\r\n\x1a\nfake"
    page = html_report(_records(), title="<T>", images={"Flow": png})
    assert "<title>&lt;T&gt;</title>" in page and "<code>fc2</code>" in page
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page).group(1)
    assert base64.b64decode(embedded) == png
    with pytest.raises(ValueError, match="at least one StepRecord"):
        markdown_report([])


# ------------------------------------------------------------------------------------------ CLI
def test_cli_report_writes_figures_and_summaries(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "run.jsonl"
    _write_log(log, _records())
    out = tmp_path / "out"
    assert main(["report", str(log), "--out", str(out), "--html", "--vanishing", "1e-7"]) == 0
    names = {"flow.png", "norms.png", "heatmap.png", "report.md", "report.html"}
    assert {p.name for p in out.iterdir()} == names
    for png in ("flow.png", "norms.png", "heatmap.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| recorded steps | 6 (steps 0 .. 5) |" in md and "(flow.png)" in md
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == 3
    captured = capsys.readouterr()
    assert "6 records" in captured.out and captured.err == ""


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err


def test_cli_missing_file(tmp_path, capsys):
    code, err = _run(["report", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path)], capsys)
    assert code == 1
    assert err.strip() == f"gradwatch: error: {tmp_path / 'nope.jsonl'}: no such file; pass " \
                          f"the JSON-lines log written by JsonlLogger."


def test_cli_empty_log(tmp_path, capsys):
    log = tmp_path / "empty.jsonl"
    log.write_text("\n", encoding="utf-8")
    code, err = _run(["report", str(log), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "no gradwatch records (it is empty)" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o").exists()


def test_cli_malformed_log(tmp_path, capsys):
    log = tmp_path / "bad.jsonl"
    _write_log(log, _records()[:2])
    lines = log.read_text(encoding="utf-8").splitlines()
    log.write_text("\n".join([lines[0], '{"not": "a record"}', lines[1]]) + "\n",
                   encoding="utf-8")
    code, err = _run(["report", str(log), "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.startswith(f"gradwatch: error: {log}:2: not a gradwatch record")
    assert len(err.strip().splitlines()) == 1
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    code, err = _run(["report", str(binary), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and err.strip() == (
        f"gradwatch: error: {binary}: not a UTF-8 text file (1 undecodable line(s)); expected a "
        f"JSON-lines log written by JsonlLogger.")


def test_cli_truncated_last_line_keeps_the_rest(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "crashed.jsonl"
    _write_log(log, _records())
    text = log.read_text(encoding="utf-8")
    log.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 40], encoding="utf-8")
    out = tmp_path / "o"
    code = main(["report", str(log), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err.startswith(f"gradwatch: warning: {log}:6: skipped a truncated")
    assert "5 records" in captured.out
    assert "| recorded steps | 5 (steps 0 .. 4) |" in (out / "report.md").read_text("utf-8")
    only = tmp_path / "only.jsonl"
    only.write_text(text[:40], encoding="utf-8")
    code, err = _run(["report", str(only), "--out", str(out)], capsys)
    assert code == 1 and "its only line is malformed" in err


def test_cli_usage(capsys):
    assert main(["--help"]) == 0
    assert "report" in capsys.readouterr().out
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    """A schema error in a real process: one line on stderr, no traceback, nothing written."""
    log = tmp_path / "r.jsonl"
    log.write_text('{"step": 0, "total_norm": 1.0, "first_nonfinite": [1]}\n', encoding="utf-8")
    run = subprocess.run([sys.executable, "-m", "gradwatch", "report", str(log)],
                         capture_output=True, text=True, cwd=tmp_path)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.splitlines() == [
        f"gradwatch: error: {log}:1: not a gradwatch record: `first_nonfinite` must be a layer "
        f"name (string) or null, but got a list [1]; fix or delete the line, or pass "
        f"--skip-bad-lines."]
    assert not (tmp_path / DEFAULT_ROOT).exists()
    run = subprocess.run([sys.executable, "-m", "gradwatch", "--help"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and "report" in run.stdout


# ------------------------------------------------------------------- runs, kills and resumes
def _header(run_id, *, resumed=False, resume_step=None, thresholds=None):
    return {"run_id": run_id, "started": "2026-01-01T00:00:00+00:00", "gradwatch": "0.1.0",
            "thresholds": thresholds or {"vanishing": 1e-7, "exploding": 1e4},
            "layers": ["fc1", "fc2"], "options": {}, "statistics": [], "resumed": resumed,
            "resume_step": resume_step}


def _write_run(path, records, header):
    with JsonlLogger(path) as log:
        log.start_run(header)
        for r in records:
            log(r)


def _cut_last_line(path):
    data = path.read_bytes()
    start = data.rindex(b"\n", 0, len(data) - 1) + 1
    path.write_bytes(data[: (start + len(data)) // 2])


def _md(out):
    return (out / "report.md").read_text(encoding="utf-8")


def test_cli_report_after_kill_and_resume(tmp_path, capsys):
    """Issue 12.1: the resumed record was glued to the cut line and the report exited 1."""
    pytest.importorskip("matplotlib")
    log, out = tmp_path / "r.jsonl", tmp_path / "o"
    recs = _records()
    _write_run(log, recs[:5], _header("feed01"))
    _cut_last_line(log)  # killed while writing step 4; checkpoint at step 4
    _write_run(log, recs[4:], _header("feed01", resumed=True, resume_step=4))
    code = main(["report", str(log), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert captured.err.startswith(f"gradwatch: warning: {log}:6: skipped a truncated or "
                                   f"unreadable line (not valid JSON: ")
    assert len(captured.err.splitlines()) == 1
    assert captured.out.startswith(f"6 records from {log} (run 0, resumed 1x) -> {out}/")
    assert "| recorded steps | 6 (steps 0 .. 5) |" in _md(out)


def _train(watch, model, opt, steps, seed):
    for step in steps:
        torch.manual_seed(seed + step)
        opt.zero_grad()
        model(torch.randn(16, 4)).square().mean().backward()
        opt.step()


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 8),
                               torch.nn.Tanh(), torch.nn.Linear(8, 2))


def test_watch_killed_and_resumed_from_a_checkpoint_is_one_run(tmp_path, capsys):
    """GradWatch + JsonlLogger end to end: checkpoint at step 3, killed writing step 4, resumed.

    Needs GradWatch to call ``start_run`` (same run id, ``resumed=True``, ``resume_step=3``
    after ``load_state_dict``); the re-done steps 3.. then replace the ones from before.
    """
    pytest.importorskip("matplotlib")
    log = tmp_path / "r.jsonl"
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(log)]) as watch:
        _train(watch, model, opt, range(3), seed=0)
        ckpt = (watch.state_dict(), {k: v.clone() for k, v in model.state_dict().items()})
        _train(watch, model, opt, range(3, 5), seed=0)
    _cut_last_line(log)
    model.load_state_dict(ckpt[1])
    with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(log)]) as watch:
        watch.load_state_dict(ckpt[0])
        _train(watch, model, opt, range(3, 7), seed=0)
        resumed = list(watch.history)
    with pytest.warns(UserWarning, match="skipped a truncated"):
        runs = read_runs(log)
    assert len(runs) == 1
    assert [r.step for r in runs[0].records] == list(range(7))
    assert list(runs[0].records[3:]) == resumed
    code = main(["report", str(log), "--out", str(tmp_path / "o")])
    captured = capsys.readouterr()
    assert code == 0 and "holds" not in captured.err
    assert "| recorded steps | 7 (steps 0 .. 6) |" in _md(tmp_path / "o")


def test_script_run_twice_reports_the_last_run_and_warns(tmp_path, capsys, monkeypatch):
    """Issue 12.2: two runs appended to one log were drawn as one, without a warning."""
    pytest.importorskip("matplotlib")
    _capture_plots(monkeypatch)
    log, out = tmp_path / "twice.jsonl", tmp_path / "o"
    lengths = (4, 3)
    # run ids that cannot be read as the run index "0" (a random id starting with 0 would make
    # `--run 0` ambiguous, which the CLI refuses)
    letters = iter("abcdef" * 100)
    monkeypatch.setattr("gradwatch.record.ledger.uuid.uuid4", lambda: uuid.UUID(next(letters) * 32))
    for n in lengths:
        model = _mlp()
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(log)]) as watch:
            _train(watch, model, opt, range(n), seed=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # header-less logs: "step 0 follows step 3" is a warning
        assert [len(r.records) for r in read_runs(log)] == list(lengths)
    code = main(["report", str(log), "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0
    assert f"gradwatch: warning: {log} holds 2 runs; reporting the last (run 1" in captured.err
    assert "| recorded steps | 3 (steps 0 .. 2) |" in _md(out)
    assert main(["report", str(log), "--out", str(out), "--run", "0"]) == 0
    captured = capsys.readouterr()
    assert "holds" not in captured.err and "| recorded steps | 4 (steps 0 .. 3) |" in _md(out)
    assert main(["report", str(log), "--out", str(out), "--all", "--html"]) == 0
    assert "4 records" in capsys.readouterr().out
    for i, n in enumerate(lengths):
        assert f"| recorded steps | {n} (steps 0 .. {n - 1}) |" in _md(out / f"run-{i}")
        assert (out / f"run-{i}" / "report.html").exists()
    index = (out / "index.md").read_text(encoding="utf-8")
    assert "(run-0/report.md)" in index and "(run-1/report.md)" in index


def test_cli_lists_and_picks_runs(tmp_path, capsys):
    log = tmp_path / "r.jsonl"
    recs = _records()
    _write_run(log, recs[:2], _header("aaaa1111"))
    _write_run(log, recs[:3], _header("bbbb2222"))
    _write_run(log, [], _header("cccc3333"))
    assert main(["report", str(log), "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0] == f"{log}: 3 runs"
    assert listed[1] == ("  run 0 · id aaaa1111 · started 2026-01-01T00:00:00+00:00 · "
                         "2 records, steps 0..1 · gradwatch 0.1.0")
    assert listed[3].startswith("  run 2 · id cccc3333") and "0 records" in listed[3]
    code, err = _run(["report", str(log), "--out", str(tmp_path / "o")], capsys)
    assert code == 1 and "run 2 · id cccc3333" in err and "no records yet" in err
    for bad, why in (("7", "between -3 and 2, but got 7"), ("dd", "'dd' matches no run id")):
        code, err = _run(["report", str(log), "--run", bad], capsys)
        assert code == 1 and why in err and len(err.strip().splitlines()) == 1
    assert main(["report", str(log), "--list", "--all"]) == 2  # mutually exclusive
    capsys.readouterr()


def test_cli_run_by_id_prefix_and_ambiguity(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log, out = tmp_path / "r.jsonl", tmp_path / "o"
    _write_run(log, _records()[:2], _header("1abc"))
    _write_run(log, _records()[:4], _header("2def"))
    assert main(["report", str(log), "--run", "1a", "--out", str(out)]) == 0
    assert "(run 0)" in capsys.readouterr().out
    code, err = _run(["report", str(log), "--run", "1"], capsys)
    assert code == 1 and "both a run index and the start of a run id" in err


# ------------------------------------------------------------------- thresholds and defaults
def _capture_plots(monkeypatch):
    seen = {}

    def fake(name):
        def draw(records, path=None, **kw):
            seen[name] = kw
            path.write_bytes(b"\x89PNG")
        return draw

    for name in ("plot_flow", "plot_norms", "plot_heatmap"):
        monkeypatch.setattr(gradwatch.plot, name, fake(name))
    return seen


def test_cli_shades_with_the_logged_thresholds_unless_overridden(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    seen = _capture_plots(monkeypatch)
    log, out = tmp_path / "r.jsonl", tmp_path / "o"
    _write_run(log, _records(), _header("t1", thresholds={"vanishing": 1e-5, "exploding": 50.0}))
    assert main(["report", str(log), "--out", str(out)]) == 0
    none = {"relative_vanishing": None, "relative_exploding": None, "roles": None}
    assert seen["plot_heatmap"] == {"vanishing": 1e-5, "exploding": 50.0}
    assert seen["plot_flow"] == {"vanishing": 1e-5, "exploding": 50.0, **none}
    assert main(["report", str(log), "--out", str(out), "--vanishing", "1e-3"]) == 0
    assert seen["plot_flow"] == {"vanishing": 1e-3, "exploding": 50.0, **none}
    rel = tmp_path / "rel.jsonl"  # the relative bands the verdicts read, and the layer roles
    _write_run(rel, _records(), {**_header("t3", thresholds={"relative_vanishing": 1e-3}),
                                 "roles": {"a": "weight"}})
    assert main(["report", str(rel), "--out", str(out)]) == 0
    assert seen["plot_flow"]["relative_vanishing"] == 1e-3
    assert seen["plot_flow"]["roles"] == {"a": "weight"}
    code, err = _run(["report", str(log), "--vanishing", "100"], capsys)
    assert code == 1 and "expected vanishing < exploding, but got 100 >= 50" in err
    code, err = _run(["report", str(log), "--exploding", "nan"], capsys)
    assert code == 1 and "--exploding must be a norm >= 0" in err
    odd = tmp_path / "odd.jsonl"
    _write_run(odd, _records(), _header("t2", thresholds={"vanishing": "1e-5"}))
    assert main(["report", str(odd), "--out", str(out)]) == 0
    assert "ignored the logged threshold vanishing='1e-5'" in capsys.readouterr().err
    assert seen["plot_flow"] == {"vanishing": None, "exploding": None, **none}


def test_cli_passes_the_header_to_report_functions_that_take_it(tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    _capture_plots(monkeypatch)
    got = {}

    def markdown_report(records, *, title="", images=None, header=None):
        got["header"] = header
        return "# md\n"

    monkeypatch.setattr(gradwatch.io.report, "markdown_report", markdown_report)
    log = tmp_path / "r.jsonl"
    _write_run(log, _records(), _header("h1"))
    assert main(["report", str(log), "--out", str(tmp_path / "o")]) == 0
    assert got["header"] == _header("h1")


def test_default_output_folder_sits_in_the_bench_folder(tmp_path, capsys, monkeypatch):
    """Issue 13: the bench and the report CLI default to the same folder scheme."""
    pytest.importorskip("matplotlib")
    from gradwatch.bench import run_bench

    assert DEFAULT_ROOT == inspect.signature(run_bench).parameters["out"].default
    monkeypatch.chdir(tmp_path)
    (tmp_path / DEFAULT_ROOT).mkdir()
    (tmp_path / DEFAULT_ROOT / "report.md").write_text("bench report", encoding="utf-8")
    _write_log(tmp_path / "mnist_run.jsonl", _records())
    assert main(["report", "mnist_run.jsonl"]) == 0
    out = tmp_path / DEFAULT_ROOT / "mnist_run"
    assert "-> gradwatch-report/mnist_run/" in capsys.readouterr().out
    assert {"report.md", "flow.png"} <= {p.name for p in out.iterdir()}
    assert (tmp_path / DEFAULT_ROOT / "report.md").read_text(encoding="utf-8") == "bench report"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bars_only_on_a_terminal(tmp_path, capsys, monkeypatch):
    """Issue 13: tqdm bars flooded redirected logs."""
    pytest.importorskip("matplotlib")
    _capture_plots(monkeypatch)
    log = tmp_path / "r.jsonl"
    _write_log(log, _records())
    assert main(["report", str(log), "--out", str(tmp_path / "o")]) == 0
    assert capsys.readouterr().err == ""  # pytest's capture is not a terminal
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert main(["report", str(log), "--out", str(tmp_path / "o")]) == 0
    assert "rendering" in term.getvalue() and "reading" in term.getvalue()
    term.seek(0)
    term.truncate()
    assert main(["report", str(log), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    assert term.getvalue() == ""


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"gradwatch {gradwatch.__version__}\n"
    run = subprocess.run([sys.executable, "-m", "gradwatch", "--version"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and run.stdout == f"gradwatch {gradwatch.__version__}\n"


@pytest.mark.skipif(shutil.which("gradwatch") is None, reason="console script not installed")
def test_console_script_version():
    run = subprocess.run(["gradwatch", "--version"], capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.startswith("gradwatch ")


# ------------------------------------------------------------------------------- bad input
def test_cli_directory_given_as_the_log(tmp_path, capsys):
    code, err = _run(["report", str(tmp_path)], capsys)
    assert code == 1
    assert err == f"gradwatch: error: {tmp_path}: is a directory; pass the .jsonl file " \
                  f"written by JsonlLogger.\n"
    _write_log(tmp_path / "run.jsonl", _records())
    code, err = _run(["report", str(tmp_path)], capsys)
    assert code == 1 and err.endswith(f"pass the .jsonl file, e.g. {tmp_path / 'run.jsonl'}.\n")


@pytest.mark.parametrize("line, why", [
    ('{"total_norm": 1.0}', "key `step` is missing (keys present: total_norm)"),
    ('{"step": Infinity, "total_norm": 1.0}',
     "`step` must be a whole number >= 0, but got Infinity"),
    ('{"step": 1, "total_norm": 1.0, "first_nonfinite": ["fc1", "fc2"]}',
     '`first_nonfinite` must be a layer name (string) or null, but got a list ["fc1", "fc2"]'),
    ('{"step": 1, "total_norm": 1.0, "layers": {"fc1": {"norm": "big"}}}',
     '`layers["fc1"].norm` must be a number, but got a string "big"'),
])
def test_cli_wrong_schema_names_line_and_key(tmp_path, capsys, line, why):
    """Issue 12.14: "skipped a truncated last line ('step')" and tracebacks."""
    log = tmp_path / "r.jsonl"
    _write_log(log, _records()[:1])
    log.write_text(log.read_text(encoding="utf-8") + line + "\n", encoding="utf-8")
    code, err = _run(["report", str(log), "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err == f"gradwatch: error: {log}:2: not a gradwatch record: {why}; fix or delete " \
                  f"the line, or pass --skip-bad-lines.\n"


def test_cli_skip_bad_lines(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    log = tmp_path / "r.jsonl"
    _write_log(log, _records())
    lines = log.read_text(encoding="utf-8").splitlines()
    lines[2] = '{"step": Infinity, "total_norm": 1.0}'
    log.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code = main(["report", str(log), "--out", str(tmp_path / "o"), "--skip-bad-lines"])
    captured = capsys.readouterr()
    assert code == 0 and "5 records" in captured.out
    assert captured.err == f"gradwatch: warning: {log}:3: skipped a line that is not a " \
                           f"gradwatch record: `step` must be a whole number >= 0, but got " \
                           f"Infinity\n"


def test_cli_zero_byte_file(tmp_path, capsys):
    log = tmp_path / "empty.jsonl"
    log.write_bytes(b"")
    code, err = _run(["report", str(log)], capsys)
    assert code == 1 and err == f"gradwatch: error: {log}: no gradwatch records (it is empty); " \
                                f"was the run stopped before its first recorded step?\n"


def test_cli_without_matplotlib(tmp_path, capsys, monkeypatch):
    log = tmp_path / "r.jsonl"
    _write_run(log, _records(), _header("m1"))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    code, err = _run(["report", str(log), "--out", str(tmp_path / "o")], capsys)
    # gradwatch is not on a package index: the hint names matplotlib itself, or the checkout
    assert code == 1 and err == "gradwatch: error: the report needs matplotlib; install it " \
        "with pip install matplotlib (or pip install -e \".[plot]\" in the gradwatch " \
        "checkout).\n"
    assert not (tmp_path / "o").exists()
    assert main(["report", str(log), "--list"]) == 0  # listing needs no matplotlib
    assert "1 run" in capsys.readouterr().out


# ------------------------------------------------------------- what a newcomer meets first
def test_cli_a_file_that_is_not_a_log_fails_in_one_line(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text("# a project\n\nsome prose\n\n" + "more prose\n" * 1100, encoding="utf-8")
    code, err = _run(["report", str(readme), "--out", str(tmp_path / "o")], capsys)
    assert code == 1
    assert err.strip().splitlines() == [
        f"gradwatch: error: {readme}: not a gradwatch log (none of its 1104 lines is a gradwatch "
        f"record or run header; line 1: not valid JSON: Expecting value: line 1 column 1 (char 0)); "
        f"pass the JSON-lines file written by JsonlLogger."]
    assert not (tmp_path / "o").exists()


def _diagnose_example(loggers=()):
    from torch import nn

    """The README's diagnose example: a 20-layer sigmoid MLP at small init, 30 SGD steps."""
    from gradwatch import GradWatch

    torch.manual_seed(0)
    layers = []
    for _ in range(20):
        layers += [nn.Linear(32, 32), nn.Sigmoid()]
    model = nn.Sequential(*layers, nn.Linear(32, 2))
    for m in model:
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, std=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(256, 32), torch.randint(0, 2, (256,))
    with GradWatch(model, optimizer=opt, loggers=list(loggers)) as watch:
        for _ in range(30):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return watch


def test_report_diagnosis_is_the_live_diagnosis(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from gradwatch.verdict.diagnosis import format_findings, headline
    from gradwatch.io.loggers import read_jsonl
    from gradwatch.io.report import diagnosis_lines

    log = tmp_path / "diagnose.jsonl"
    watch = _diagnose_example([JsonlLogger(log)])
    live = watch.diagnose()
    assert live and live[0].kind == "vanishing" and live[0].steps > 1
    from_log = diagnosis_lines(list(read_jsonl(log)))
    assert from_log == [line.removeprefix("- ")  # the same words, line for line
                        for line in format_findings(live).splitlines()[1:]]
    assert headline(live[0]) in watch.summary()
    code = main(["report", str(log), "--out", str(tmp_path / "o"), "--html"])
    assert code == 0
    md = (tmp_path / "o" / "report.md").read_text(encoding="utf-8")
    assert f"- {headline(live[0])}" in md
    html = (tmp_path / "o" / "report.html").read_text(encoding="utf-8")
    assert "<th>quantity</th><th>value</th>" in html and "threshold <code>vanishing</code>" in html
