"""The bench report as a newcomer reads it, the README table script, and the CLI's error paths."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import gradwatch.bench.__main__ as cli
from gradwatch.bench import BUDGETS, EXPERIMENTS
from gradwatch.bench.common import Claim, ExperimentResult, LabelledRun
from gradwatch.bench.wording import duration
from gradwatch.bench.writeup import PARTIAL_BANNER, mark_partial, write_report

REPO = Path(__file__).resolve().parents[2]
QUICK = BUDGETS["quick"]


@dataclass(frozen=True)
class SpreadClaim(Claim):
    """A claim with spread over seeds, a quantitative part, and a field the report does not know."""

    seeds: int = 0
    behaved: int | None = None
    spread: str = ""
    quantitative: str = ""
    quantitative_measured: str = ""
    quantitative_reproduced: bool | None = None
    wall_note: str = ""


def _results() -> list[ExperimentResult]:
    chain = ExperimentResult("identity_chain", "Identity chain", seconds=0.2, claims=[
        Claim("c=2: grows by c per layer", "ratio 2", "ratio 2 (max rel. error 0)", True,
              "exploding: all 100 layers")],
        runs=[LabelledRun("identity c=2", "pathological", True, "exploding")])
    clip = ExperimentResult("clip_reference", "Clipping reference", seconds=75.0, claims=[
        SpreadClaim("clip = torch", "identical", "max diff 1e-7", None, "n/a", seeds=4, behaved=3,
                    spread="median 1e-7 (range 0–2e-7, n=4)", quantitative="epoch 3",
                    quantitative_measured="epoch 5", quantitative_reproduced=False,
                    wall_note="3 of 4 seeds")],
        data={"cases": [{"seed": 0, "clipped": True, "diff": 1.25e-7},
                        {"seed": 1, "clipped": False, "diff": 0.0}],
              "curve": [0.1, 0.2]})
    return [chain, clip]


def test_report_has_a_row_per_claim_and_no_empty_section(tmp_path):
    md, js = write_report(tmp_path, _results(), budget=QUICK, seconds=30.0, device="cpu",
                          threads=1)
    text = md.read_text(encoding="utf-8")
    assert "on cpu (1 thread)," in text and "1 threads" not in text
    assert ("| experiment | claim | source | measured | spread over seeds | seeds as claimed | "
            "reproduced | quantitative part (source → measured) | gradwatch verdict |") in text
    assert ("| [identity_chain](#identity_chain) | c=2: grows by c per layer | ratio 2 | "
            "ratio 2 (max rel. error 0) | – | – | yes | – | exploding: all 100 layers |") in text
    assert ("| [clip_reference](#clip_reference) | clip = torch | identical | max diff 1e-7 | "
            "median 1e-7 (range 0–2e-7, n=4) | 3/4 | undecided (budget) | "
            "epoch 3 → epoch 5: **no** | n/a |") in text
    sections = text.split("\n## ")[3:]  # after the claims table and the calibration
    assert [s.split("\n")[0] for s in sections] == ["Identity chain", "Clipping reference"]
    chain, clip = sections
    assert "`identity_chain` took < 1 s." in chain and "took 0 s" not in text
    assert "- **c=2: grows by c per layer** — reproduced: yes." in chain
    assert "1 of 1 pathological runs flagged" in chain
    assert "`clip_reference` took 75 s." in clip
    assert "  - seeds that behaved as claimed: 3/4" in clip
    assert "  - quantitative part: epoch 3 → epoch 5: **no**" in clip
    assert "  - wall note: 3 of 4 seeds" in clip  # a Claim field the report does not know
    assert "| seed | clipped | diff |\n| --- | --- | --- |\n| 0 | yes | 1.25e-07 |" in clip
    assert "curve" not in clip  # plain number lists stay in results.json
    assert json.loads(js.read_text())["meta"]["partial"] is None


def test_report_marks_missing_experiments_and_stopped_runs_partial(tmp_path):
    md, js = write_report(tmp_path, _results()[:1], budget=QUICK, seconds=1.0, device="cpu",
                          threads=2, planned=["identity_chain", "xor", "grid"])
    text = md.read_text(encoding="utf-8")
    expected = f"{PARTIAL_BANNER} 1 of 3 experiments finished; not run: xor, grid."
    assert text.split("\n")[2] == expected and "(2 threads)" in text
    assert json.loads(js.read_text())["meta"]["partial"].startswith("1 of 3")
    assert mark_partial(tmp_path, "FileNotFoundError: no MNIST")
    assert mark_partial(tmp_path, "interrupted (Ctrl-C)")  # twice: one banner, the latest
    lines = md.read_text(encoding="utf-8").split("\n")
    stopped = f"{PARTIAL_BANNER} The run stopped early: interrupted (Ctrl-C)"
    assert [ln for ln in lines if ln.startswith(PARTIAL_BANNER)] == [stopped, expected]
    assert lines[:5] == ["# gradwatch bench report", "", stopped, "", expected]
    assert json.loads(js.read_text())["meta"]["partial"] == (
        "stopped early: interrupted (Ctrl-C); 1 of 3 experiments finished; not run: xor, grid.")
    assert not mark_partial(tmp_path / "none", "x")


def test_report_prints_declared_tables_and_draws_histograms(tmp_path):
    hist = {"run": "sigmoid seed 0",
            "weight": {"input": {0: {"counts": [1, 2], "edges": [-1.0, 0.0, 1.0]},
                                 1: {"counts": [2, 1], "edges": [-1.0, 0.0, 1.0]}}},
            "grad_norm": {"input": {0: 1e-7, 1: 2e-7}, "output": {0: 0.5, 1: 0.4}}}
    res = ExperimentResult("weights", "Weight histograms", data={"histograms": hist})
    res.tables = {"loop": {"title": "Closed loop", "columns": ["cell", "acc"],  # common.py's field
                           "rows": [["a", 0.5], {"cell": "b", "acc": 0.25}], "note": "two cells"}}
    md, _ = write_report(tmp_path, [res], budget=QUICK, seconds=1.0, device="cpu", threads=1)
    text = md.read_text(encoding="utf-8")
    assert ("**Closed loop**\n\n| cell | acc |\n| --- | --- |\n| a | 0.5 |\n| b | 0.25 |\n\n"
            "two cells") in text
    assert res.figures == ["figures/weights_weight_hist.png", "figures/weights_grad_norm_epochs.png"]
    for fig in res.figures:
        assert f"]({fig})" in text and (tmp_path / fig).stat().st_size > 1000
    write_report(tmp_path, [res], budget=QUICK, seconds=1.0, device="cpu", threads=1)
    assert len(res.figures) == 2  # rewriting the report draws nothing twice


@pytest.mark.parametrize("seconds, text", [(0.0, "< 1 s"), (0.99, "< 1 s"), (12.4, "12 s"),
                                           (89.0, "89 s"), (894.0, "14.9 min")])
def test_duration(seconds, text):
    assert duration(seconds) == text


# ---------------------------------------------------------------------------- README table
def _script():
    spec = importlib.util.spec_from_file_location("readme_table", REPO / "scripts/readme_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


DEFAULT = {"name": "default", "mnist_train": 10_000, "mnist_test": 2_000, "sigmoid_epochs": 3,
           "fixed_epochs": 2, "resnet_train": 2_000, "linear_epochs": 6, "grid_steps": 150,
           "grid_depth": 10, "xor_epochs": 15_000, "xor_depths": [1, 2, 3, 5, 10], "seeds": 4,
           "mnist_seeds": 1, "every": 1}  # a budget as results.json stores it


def _sample_run(tmp_path: Path, **meta) -> Path:
    budget = DEFAULT
    payload = {"meta": {"budget": budget, "seconds": 894.0, "device": "cpu", "threads": 1,
                        "torch": "2.14.1", "partial": None} | meta,
               "calibration": {"pathological_flagged": 20, "pathological_total": 21,
                               "healthy_flagged": 16, "healthy_total": 72,
                               "missed": ["linear no clip seed 0"], "false_alarms": []},
               "experiments": {r.name: r.to_dict() for r in _results()}}
    run = tmp_path / "run"
    (run / "figures").mkdir(parents=True)
    (run / "figures" / "sigmoid_mlp_flow.png").write_bytes(b"\x89PNG fake")
    (run / "results.json").write_text(json.dumps(payload), encoding="utf-8")
    return run / "results.json"


TABLE = """\
Headline table of one `default` run on cpu (`--threads 1`, torch 2.14.1), **14.9 min** wall time; \
generated from its `results.json` by `scripts/readme_table.py`.

Budget: MNIST uses the first 10,000 training and the first 2,000 test images; epochs per run: \
sigmoid MLP 3, fixed models 2 (ResNet on 2,000 images), deep linear 6; grid 150 steps per cell; \
XOR at most 15,000 epochs, depths 1, 2, 3, 5, 10, 4 seeds; 1 seed per MNIST run. The sources \
used 10 full MNIST epochs and 100,000 XOR epochs (`--full`); claims a smaller budget cannot \
decide say so.

| claim (source) | measured | spread over seeds | seeds as claimed | reproduced | \
quantitative part (source → measured) | gradwatch verdict |
| --- | --- | --- | --- | --- | --- | --- |
| c=2: grows by c per layer (ratio 2) | ratio 2 (max rel. error 0) | – | – | yes | – | \
exploding: all 100 layers |
| clip = torch (identical) | max diff 1e-7 | median 1e-7 (range 0–2e-7, n=4) | 3/4 | \
undecided (budget) | epoch 3 → epoch 5: **no** | n/a |

Calibration of the default `Thresholds()` (runs labelled from the literature before reading the \
verdicts): **20 / 21 pathological runs flagged** and **16 / 72 healthy runs flagged**.
Missed: linear no clip seed 0."""


def test_readme_table_is_generated_between_the_markers(tmp_path, capsys):
    script, results = _script(), _sample_run(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# intro\n\n{script.START}\nold hand-made table\n{script.END}\n\n## next\n",
                      encoding="utf-8")
    fig = tmp_path / "img" / "flow.png"
    argv = [str(results), "--readme", str(readme), "--figure-to", str(fig)]
    assert script.main([*argv, "--check"]) == 1  # stale: nothing written yet
    assert "old hand-made table" in readme.read_text()
    assert script.main(argv) == 0
    assert readme.read_text() == (f"# intro\n\n{script.START}\n{TABLE}\n{script.END}\n\n"
                                  f"## next\n")
    assert fig.read_bytes() == b"\x89PNG fake"
    assert script.main([*argv, "--check"]) == 0  # idempotent
    capsys.readouterr()


def test_readme_table_refuses_partial_or_quick_runs_and_missing_markers(tmp_path, capsys):
    script = _script()
    readme = tmp_path / "README.md"
    readme.write_text("no markers\n", encoding="utf-8")
    ok = _sample_run(tmp_path)
    assert script.main([str(ok), "--readme", str(readme), "--figure", ""]) == 2
    assert "Expected exactly one" in capsys.readouterr().err
    partial = _sample_run(tmp_path / "p", partial="1 of 8 experiments finished")
    assert script.main([str(partial), "--readme", str(readme)]) == 2
    assert "partial run" in capsys.readouterr().err
    quick = _sample_run(tmp_path / "q", budget=DEFAULT | {"name": "quick"})
    assert script.main([str(quick), "--readme", str(readme)]) == 2
    assert "`quick` run" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n"
    with pytest.raises(ValueError, match="before"):
        script.replace_between(f"{script.END}\n{script.START}", "x")


# ---------------------------------------------------------------------------- CLI error paths
@pytest.fixture
def no_run(monkeypatch):
    """Fails the test if the bench starts an experiment."""
    def run_bench(*args, **kwargs):
        raise AssertionError("an experiment started although the preflight should have stopped")

    monkeypatch.setattr(cli, "run_bench", run_bench)


def _one_line(err: str) -> str:
    # the error is one line; the progress lines of experiments that finished may precede it
    lines = [ln for ln in err.strip().split("\n") if not ln.startswith("[gradwatch.bench] ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_missing_data_stops_before_any_experiment(tmp_path, capsys, no_run):
    out = tmp_path / "report"
    code = cli.main(["sigmoid_mlp", "--data-dir", str(tmp_path / "empty"), "--out", str(out)])
    line = _one_line(capsys.readouterr().err)
    assert code == 2 and "MNIST is not under" in line and "--data-dir DATA" in line
    assert not out.exists()


def test_quick_without_data_dir_says_how_to_get_mnist_then_stops(tmp_path, capsys, monkeypatch,
                                                                  no_run):
    monkeypatch.delenv("GRADWATCH_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def offline(*args, **kwargs):
        raise FileNotFoundError("no network")

    monkeypatch.setattr("gradwatch.bench.data.load_mnist", offline)
    assert cli.main(["--quick", "--out", str(tmp_path / "r")]) == 2
    notice, error = capsys.readouterr().err.strip().split("\n")
    assert notice.startswith("MNIST is not in the cache") and "--data-dir DATA" in notice
    assert error.startswith("error: could not download MNIST")


def test_cuda_without_gpu_is_one_line(monkeypatch, capsys, no_run):
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert cli.main(["identity_chain", "--device", "cuda"]) == 2
    assert "--device cuda" in _one_line(capsys.readouterr().err)


def test_missing_matplotlib_names_the_extra(monkeypatch, capsys, no_run):
    real = importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert cli.main(["identity_chain"]) == 2
    err = _one_line(capsys.readouterr().err)  # (gradwatch is on no index: no gradwatch[bench])
    assert "pip install matplotlib (or pip install -e '.[bench]' in a gradwatch checkout)" in err


def test_a_failure_mid_run_leaves_a_report_marked_partial(tmp_path, monkeypatch, capsys):
    def ok(ctx):
        return ExperimentResult("fake_ok", "Fake", claims=[Claim("c", "s", "m", True, "v")])

    def fails(ctx):
        raise FileNotFoundError("the data went away")

    monkeypatch.setitem(EXPERIMENTS, "fake_ok", ("ok", ok))
    monkeypatch.setitem(EXPERIMENTS, "fake_fail", ("fails", fails))
    monkeypatch.setattr(cli, "NO_DATA", frozenset({"fake_ok", "fake_fail"}))
    out = tmp_path / "r"
    assert cli.main(["fake_ok", "fake_fail", "--out", str(out), "--threads", "1"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "the data went away" in line and "marked partial" in line
    text = (out / "report.md").read_text(encoding="utf-8")
    assert f"{PARTIAL_BANNER} The run stopped early: FileNotFoundError: the data went away" in text
    assert "| [fake_ok](#fake_ok) | c | s | m | yes | v |" in text


@pytest.mark.parametrize("flag, bar", [((), False), (("--progress",), True)])
def test_no_progress_bar_when_stderr_is_not_a_terminal(tmp_path, capsys, flag, bar):
    argv = ["xor", "--quick", "--xor-epochs", "3", "--xor-depths", "1", "--seeds", "1",
            "--threads", "1", "--out", str(tmp_path), *flag]
    assert cli.main(argv) == 0  # pytest's captured stderr is not a tty
    err = capsys.readouterr().err
    assert ("it/s" in err or "\r" in err) is bar, err[:300]


# ---------------------------------------------------------------------------- bench figures
def test_curves_panel_names_its_axis_draws_references_and_never_hides_a_line(tmp_path,
                                                                             monkeypatch):
    from matplotlib.image import imread

    from gradwatch.bench import figures

    drawn = {}
    real = figures._draw_panel

    def spy(ax, name, panel, xlabel):
        real(ax, name, panel, xlabel)
        drawn[name] = ax

    same = ([25, 50], [0.4, 0.6])
    panel = figures.Panel({"no clip": same, 'clip="auto"': same, "per-tensor": ([25, 50], [0.3, 0.5]),
                           "resnet": ([], [])}, ylabel="training accuracy (%)", percent=True,
                          references=(figures.Reference(0.9, "source: > 90%"),),
                          points={"test accuracy (end)": (50, 0.55)})
    loss = figures.Panel({"a": ([1, 2, 3, 4], [0.52, 0.51, 0.5, 0.5])}, ylabel="loss", logy=True,
                         references=(figures.Reference(1e-7, "criterion 1e-7"),))
    monkeypatch.setattr(figures, "_draw_panel", spy)
    rel = figures.plot_curves({}, tmp_path / "c.png", xlabel="step", ylabel="unused",
                              title="Deep linear MLP", panels={"acc": panel, "loss": loss})
    assert rel == "figures/c.png" and imread(tmp_path / "c.png").shape[0] > 100
    acc = drawn["acc"]
    labels = [ln.get_label() for ln in acc.get_lines()]
    assert labels == ['no clip = clip="auto" (identical)', "per-tensor",
                      "resnet (no logged point: shorter than one log interval)", "source: > 90%"]
    assert acc.get_ylabel() == "training accuracy (%)"
    assert acc.yaxis.get_major_formatter()(0.9, 0) == "90%"
    ref = acc.get_lines()[-1]
    assert list(ref.get_ydata()) == [0.9, 0.9]
    np.testing.assert_allclose(acc.collections[0].get_offsets(), [[50, 0.55]])
    low, high = drawn["loss"].get_ylim()
    assert drawn["loss"].get_yscale() == "log" and low < 1e-7 < 0.5 < high


def test_save_records_figure_draws_default_threshold_bands_and_names_the_model(tmp_path):
    from gradwatch import Thresholds
    from gradwatch.bench.figures import save_records_figure
    from gradwatch.record.records import LayerStat, StepRecord

    recs = [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=2e-7),
                                                       "b": LayerStat(norm=1e-2),
                                                       "c": LayerStat(norm=1.0)})]
    assert save_records_figure("flow", [], tmp_path / "x.png") is None
    rel = save_records_figure("flow", recs, tmp_path / "f.png", model="Deep sigmoid MLP")
    assert rel == "figures/f.png" and (tmp_path / "f.png").stat().st_size > 1000
    from gradwatch.bench.figures import records_figure

    ax = records_figure("flow", recs, model="Deep sigmoid MLP").axes[0]
    assert ax.get_title() == "Deep sigmoid MLP: gradient flow across 3 layers"
    th = Thresholds()  # the default bounds the bench's runs use: relative band, absolute line
    bands = [p.get_label() for p in ax.patches]
    assert f"relative vanishing band: < {th.relative_vanishing:g} × that median (0.001)" in bands
    lines = [ln.get_label() for ln in ax.get_lines()]
    assert f"absolute vanishing bound: norm < {th.vanishing:g}" in lines
    ax = records_figure("flow", recs, thresholds=None, title="own").axes[0]
    assert ax.get_title() == "own" and not ax.patches  # explicit thresholds=None: no bounds
    assert not [ln for ln in ax.get_lines() if ln.get_label().startswith("absolute")]


# ------------------------------------------------------------- what a newcomer meets first
def test_cuda_without_gpu_names_the_real_cause(monkeypatch):
    import types

    fake = types.SimpleNamespace(__version__="2.14.1+cu130",
                                 version=types.SimpleNamespace(cuda="13.0", hip=None))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    text = cli.cuda_problem(fake)
    assert "CUDA_VISIBLE_DEVICES=''" in text and "the build is not the problem" in text
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(cli.Path, "exists", lambda self: False)
    monkeypatch.setattr(cli.sys, "platform", "linux")
    text = cli.cuda_problem(fake)
    assert "no NVIDIA GPU driver" in text and "CPU-only" not in text
    cpu = types.SimpleNamespace(__version__="2.14.1+cpu",
                                version=types.SimpleNamespace(cuda=None, hip=None))
    assert "is a CPU-only build" in cli.cuda_problem(cpu)


def test_html_report_is_written_beside_the_markdown(tmp_path):
    md, _ = write_report(tmp_path, _results(), budget=QUICK, seconds=30.0, device="cpu",
                         threads=1)
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.count("<table>") >= 2
    assert "<th>experiment</th>" in page and "<a href='#identity_chain'>identity_chain</a>" in page
    assert "<h2>Identity chain</h2>" in page and "|" not in page.split("<body>")[1].split(
        "<h2>Threshold")[0].replace("||", "")
    assert "<details>" in page or "<details><summary>" in page


def test_the_bench_table_lives_between_the_markers_of_the_docs_bench_page():
    page = (REPO / "docs" / "bench.md").read_text(encoding="utf-8")
    script = _script()
    assert page.count(script.START) == 1 and page.count(script.END) == 1
