"""gradwatch.report text and the ``python -m gradwatch report`` command on good and bad logs."""

from __future__ import annotations

import base64
import math
import re
import statistics
import subprocess
import sys

import pytest

from gradwatch import JsonlLogger
from gradwatch.__main__ import main
from gradwatch.records import LayerStat, Status, StepRecord
from gradwatch.report import findings, html_report, layer_table, markdown_report, run_overview

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
        f"min {min(finite):.3g} · median {statistics.median(finite):.3g} · max {max(finite):.3g}")
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
    assert fc1["median norm"] == f"{statistics.median([1e-9, 2e-9, 3e-9, 5e-9, 6e-9]):.3g}"
    assert fc1["median act norm"] == f"{statistics.median([0.1 * k for k in range(1, 7)]):.3g}"
    assert (fc1["vanishing"], fc1["exploding"], fc1["non-finite"]) == ("5", "0", "1")
    assert fc2["max norm"] == "2" and fc2["median act norm"] == "–"
    assert (fc2["vanishing"], fc2["non-finite"], fc2["spikes"]) == ("0", "1", "1")


def test_findings_name_the_problems_worst_first():
    lines = findings(_records())
    assert lines[0] == "Non-finite gradients at 1 of 6 steps; first at step 3, born in `fc2`."
    assert "`fc1` (5/6 steps)" in lines[1] and "vanishing" in lines[1]
    healthy = [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=1.0)})]
    assert findings(healthy) == [
        "No layer was flagged, no gradient went non-finite, no spike, no clipping."]


def test_markdown_and_html_reports():
    md = markdown_report(_records(), title="T", images={"Flow": "flow.png"})
    assert md.startswith("# T\n") and "![Flow](flow.png)" in md
    assert "| 1 | fc2 | 0.5 | 1 | 2 | – | 0 | 0 | 1 | 1 |" in md  # norms total/2, NaN skipped
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
    assert code == 1 and "not a text file" in err


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
    run = subprocess.run([sys.executable, "-m", "gradwatch", "report", str(tmp_path / "x.jsonl")],
                         capture_output=True, text=True)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.startswith("gradwatch: error:")
    run = subprocess.run([sys.executable, "-m", "gradwatch", "--help"], capture_output=True,
                         text=True)
    assert run.returncode == 0 and "report" in run.stdout
