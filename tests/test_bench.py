"""The bench end to end on tiny budgets, its CLI, and its pure helpers against plain torch."""

from __future__ import annotations

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from gradwatch import GradWatch
from gradwatch.bench import BUDGETS, EXPERIMENTS, run_bench
from gradwatch.bench.__main__ import main
from gradwatch.bench.clipref import clip_gradient_norm, compare_clipping
from gradwatch.bench.common import LabelledRun, ExperimentResult, fmt, mean_spread
from gradwatch.bench.grid import prior_label
from gradwatch.bench.mnist import blowup_step
from gradwatch.bench.report import calibration
from gradwatch.bench.train import PerTensorNorm, TrainRun
from gradwatch.bench.data import MNIST_FILES, load_mnist, resolve_data_root

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    env = os.environ.get("GRADWATCH_DATA")
    root = Path(env) if env else REPO / ".." / "shared" / "data"
    raw = root / "MNIST" / "raw"
    if not all((raw / f).is_file() or (raw / (f + ".gz")).is_file() for f in MNIST_FILES):
        pytest.skip(f"MNIST not found under {raw} (set GRADWATCH_DATA or put ../shared/data "
                    f"beside the repository)")
    return root


TINY = replace(BUDGETS["quick"], name="tiny", mnist_train=320, mnist_test=100, sigmoid_epochs=1,
               fixed_epochs=1, resnet_train=32, linear_epochs=1, grid_steps=2, grid_depth=2,
               xor_epochs=10, xor_depths=(1, 5), seeds=2, mnist_seeds=1)


def test_bench_end_to_end_tiny(tmp_path):
    data = _data_dir()
    md, js = run_bench(budget=TINY, out=tmp_path / "report", data_dir=data, progress=False,
                       cache_dir=tmp_path / "cache")
    text = md.read_text(encoding="utf-8")
    assert "## Documented claims" in text and "Threshold calibration" in text
    payload = json.loads(js.read_text(encoding="utf-8"))
    assert set(payload) == {"meta", "calibration", "experiments"}
    assert list(payload["experiments"]) == list(EXPERIMENTS)
    assert payload["meta"]["budget"]["name"] == "tiny"
    for name, exp in payload["experiments"].items():
        assert exp["claims"], name
        for claim in exp["claims"]:
            assert set(claim) == {"claim", "source", "measured", "reproduced", "verdict"}
            assert claim["reproduced"] in (True, False, None)
        for fig in exp["figures"]:
            assert (md.parent / fig).stat().st_size > 1000, fig
    cal = payload["calibration"]
    assert 0 <= cal["pathological_flagged"] <= cal["pathological_total"] > 0
    assert 0 <= cal["healthy_flagged"] <= cal["healthy_total"] > 0
    ident = payload["experiments"]["identity_chain"]["data"]
    assert ident["c=2.0"]["act_ratio_max_rel_error"] < 1e-5
    assert all(c["reproduced"] for c in payload["experiments"]["identity_chain"]["claims"])
    assert all(c["reproduced"] for c in payload["experiments"]["clip_reference"]["claims"])
    xor = payload["experiments"]["xor"]["data"]["table"]
    assert set(xor) == {"plain 1", "plain 5", "residual 1", "residual 5"}
    for row in xor.values():
        assert all(0 <= v <= 2 for v in row["final_loss"])
        assert all(0 < o < 1 for run in row["outputs"] for o in run)
    for run in payload["experiments"]["sigmoid_mlp"]["data"]["runs"]:
        assert run["steps"] == 10 and 0 <= run["test_acc"] <= 1
        assert all(math.isfinite(v) and v > 0 for v in run["total_norm"])
    cells = payload["experiments"]["grid"]["data"]["cells"]
    assert len(cells) == 36 and all(c["steps"] == 2 for c in cells.values())


def test_cli_list(capsys):
    assert main(["--list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in EXPERIMENTS)


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        main(["no_such_experiment"])
    with pytest.raises(ValueError, match="Unknown experiment"):
        run_bench(["nope"])


def test_cli_runs_one_cheap_experiment(tmp_path, capsys):
    assert main(["identity_chain", "--out", str(tmp_path), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert list(payload["experiments"]) == ["identity_chain"]


def test_cli_xor_budget_overrides(tmp_path):
    assert main(["xor", "--quick", "--xor-epochs", "3", "--xor-depths", "1,3", "--seeds", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["meta"]["budget"]["xor_epochs"] == 3
    assert payload["meta"]["budget"]["xor_depths"] == [1, 3]
    xor = payload["experiments"]["xor"]["data"]
    assert set(xor["table"]) == {"plain 1", "plain 3", "residual 1", "residual 3"}
    assert xor["plain_epochs_run"] == 3 and xor["residual_epochs_run"] == 3


def test_xor_sweep_without_shallow_depths_leaves_the_depth_claim_undecided(tmp_path):
    assert main(["xor", "--quick", "--xor-epochs", "2", "--xor-depths", "6", "--seeds", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    claims = json.loads((tmp_path / "results.json").read_text())["experiments"]["xor"]["claims"]
    depth_claim = claims[-1]
    assert depth_claim["measured"].startswith("no depth below 5 in this sweep")
    assert depth_claim["reproduced"] is None


@pytest.mark.parametrize("flags", [["--xor-epochs", "0"], ["--xor-depths", "5,x"],
                                   ["--xor-depths", "0,5"]])
def test_cli_rejects_bad_xor_overrides(flags, capsys):
    with pytest.raises(SystemExit):
        main(["xor", *flags])
    assert "--xor-" in capsys.readouterr().err


def test_missing_data_error_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST/raw"):
        load_mnist(tmp_path / "empty", download=False)


def test_read_only_root_is_mirrored_into_cache(tmp_path):
    src = tmp_path / "ro" / "MNIST" / "raw"
    src.mkdir(parents=True)
    for f in MNIST_FILES:
        (src / (f + ".gz")).write_bytes(b"x")
    src.chmod(0o555)
    try:
        root = resolve_data_root(tmp_path / "ro", cache_dir=tmp_path / "cache")
    finally:
        src.chmod(0o755)
    assert root == tmp_path / "cache"
    assert all((root / "MNIST" / "raw" / (f + ".gz")).exists() for f in MNIST_FILES)


def test_mnist_subset_is_normalised(tmp_path):
    data = load_mnist(_data_dir(), train_limit=100, test_limit=10, cache_dir=tmp_path)
    assert data.train_x.shape == (100, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert 0 <= data.train_x.min() and data.train_x.max() <= 1
    assert data.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert data.test_y.tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]


def test_clip_reference_formula_matches_torch():
    g = [np.full((3,), 2.0, np.float32), np.full((4,), -1.0, np.float32)]
    total = math.sqrt(3 * 4 + 4 * 1)
    out = clip_gradient_norm(g, 0.25)
    np.testing.assert_allclose(out[0], 2.0 * 0.25 / (total + 1e-6))
    small = clip_gradient_norm([np.array([0.1])], 0.25)
    np.testing.assert_array_equal(small[0], [0.1])
    for scale in (0.01, 100.0):
        row = compare_clipping(0, scale)
        assert row["gradwatch_vs_torch"] < 1e-6 and row["gradwatch_vs_reference"] < 1e-6


def test_per_tensor_norm_equals_torch_per_tensor_clipping():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2))
    x = torch.randn(9, 5) * 10

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(x).square().sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    raw = grads()
    expected = [g * min(1.0, 0.5 / (g.norm().item() + 1e-6)) for g in raw]
    grads()
    with GradWatch(model, clip=PerTensorNorm(0.5), activations=False) as watch:
        rec = watch.step()
    for p, e in zip(model.parameters(), expected):
        torch.testing.assert_close(p.grad, e)
    assert rec.clipped and rec.total_norm == pytest.approx(
        torch.linalg.vector_norm(torch.stack([g.norm() for g in raw])).item(), rel=1e-6)


def test_blowup_step():
    run = TrainRun("r", log_steps=[25, 50, 75, 100], losses=[2.0, 0.5, 1.0, 3.0])
    assert blowup_step(run) == 100
    assert blowup_step(TrainRun("ok", log_steps=[1, 2], losses=[2.0, 1.0])) is None
    assert blowup_step(TrainRun("nan", log_steps=[1, 2], losses=[2.0, math.nan])) == 2


def test_calibration_counts():
    res = ExperimentResult("x", "x", runs=[LabelledRun("a", "pathological", True),
                                           LabelledRun("b", "pathological", False),
                                           LabelledRun("c", "healthy", True, "why")])
    cal = calibration([res])
    assert (cal["pathological_flagged"], cal["pathological_total"]) == (1, 2)
    assert (cal["healthy_flagged"], cal["healthy_total"]) == (1, 1)
    assert cal["missed"] == ["b"] and cal["false_alarms"] == ["c: why"]


def test_prior_labels_and_stats():
    assert prior_label("sigmoid", "xavier", False, False) == "pathological"
    assert prior_label("sigmoid", "xavier", True, False) == "healthy"
    assert prior_label("relu", "he", False, False) == "healthy"
    assert prior_label("relu", "xavier", False, True) is None
    assert mean_spread([1.0, 3.0]) == (2.0, pytest.approx(math.sqrt(2)))
    assert fmt([0.5]) == "0.5" and "n=2" in fmt([1.0, 2.0])
