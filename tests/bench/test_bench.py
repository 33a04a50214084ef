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
from gradwatch.bench.common import (Claim, ExperimentResult, LabelledRun, decide, fmt,
                                    mean_spread, spread)
from gradwatch.bench.grid import Cell, apply_remedy, named_remedies, prior_label
from gradwatch.bench.linear import blowup_step, grad_jump
from gradwatch.bench.lr import norm_growth
from gradwatch.bench.writeup import calibration
from gradwatch.bench.train import TrainRun, make_optimizer
from gradwatch.bench.data import MNIST_FILES, load_mnist, resolve_data_root

REPO = Path(__file__).resolve().parents[2]


def _data_dir() -> Path:
    env = os.environ.get("GRADWATCH_DATA")
    root = Path(env) if env else REPO / ".." / "shared" / "data"
    raw = root / "MNIST" / "raw"
    if not all((raw / f).is_file() or (raw / (f + ".gz")).is_file() for f in MNIST_FILES):
        pytest.skip(f"MNIST not found under {raw} (set GRADWATCH_DATA or put ../shared/data "
                    f"beside the repository)")
    return root


TINY = replace(BUDGETS["quick"], name="tiny", mnist_train=320, mnist_test=100, sigmoid_epochs=1,
               fixed_epochs=1, resnet_train=32, linear_epochs=1, grid_steps=2, grid_depth=1,
               xor_epochs=10, xor_depths=(1, 5), seeds=2, mnist_seeds=1, small_steps=6,
               small_train=96, every=2)


MINE = [n for n in EXPERIMENTS if n != "xor"]  # XOR has its own tests below


def test_bench_end_to_end_tiny(tmp_path, capsys):
    data = _data_dir()
    md, js = run_bench(MINE, budget=TINY, out=tmp_path / "report", data_dir=data, progress=False,
                       cache_dir=tmp_path / "cache", figures=False, threads=1)
    # progress without bars (output redirected): one line per experiment, n of N and elapsed
    lines = [ln for ln in capsys.readouterr().err.splitlines() if "experiments:" in ln]
    assert [ln.split(" experiments:")[0] for ln in lines] == [
        f"[gradwatch.bench] {k} of {len(MINE)}" for k in range(1, len(MINE) + 1)]
    assert all(f" {name} " in ln and "elapsed" in ln for ln, name in zip(lines, MINE))
    text = md.read_text(encoding="utf-8")
    assert "## Documented claims" in text and "Threshold calibration" in text
    payload = json.loads(js.read_text(encoding="utf-8"))
    assert set(payload) == {"meta", "calibration", "experiments"}
    assert list(payload["experiments"]) == MINE
    assert payload["meta"]["budget"]["name"] == "tiny"
    for name, exp in payload["experiments"].items():
        assert exp["claims"], name
        for claim in exp["claims"]:
            assert {"claim", "source", "measured", "reproduced", "verdict", "seeds", "behaved",
                    "spread", "quantitative_reproduced", "budget"} <= set(claim)
            assert claim["reproduced"] in (True, False, None)
            assert claim["reproduced_text"] == {True: "yes", False: "no",
                                                None: "undecided (budget)"}[claim["reproduced"]]
        assert set(exp["calibration"]) == {"healthy_flagged", "healthy_total",
                                           "pathological_flagged", "pathological_total"}
        for fig in exp["figures"]:
            assert (md.parent / fig).stat().st_size > 1000, fig
    cal = payload["calibration"]  # tiny runs confirm few labels; the counts must add up
    for key in ("healthy_flagged", "healthy_total", "pathological_flagged", "pathological_total"):
        assert cal[key] == sum(e["calibration"][key] for e in payload["experiments"].values())
    assert 0 <= cal["pathological_flagged"] <= cal["pathological_total"] > 0
    ident = payload["experiments"]["identity_chain"]["data"]
    assert ident["c=2.0"]["act_ratio_max_rel_error"] < 1e-5
    assert all(c["reproduced"] for c in payload["experiments"]["identity_chain"]["claims"])
    assert all(c["reproduced"] for c in payload["experiments"]["clip_reference"]["claims"])
    sig = payload["experiments"]["sigmoid_mlp"]
    for run in sig["data"]["runs"]:
        assert run["steps"] == 10 and 0 <= run["test_acc"] <= 1
        assert len(run["total_norm"]) == 5  # every=2
        assert all(math.isfinite(v) and v > 0 for v in run["total_norm"])
    # one epoch cannot show a 3-epoch stall: undecided unless accuracy already passed 20%
    peak = max(sig["data"]["runs"][0]["epoch_acc"])
    assert sig["claims"][0]["reproduced"] is (None if peak < 0.2 else False)
    hist = sig["data"]["histograms"]
    assert list(hist["weight"]["input"]) == ["0", "1"]  # initialisation and after epoch 1
    assert sum(hist["weight"]["input"]["0"]["counts"]) == 784 * 256
    assert sum(hist["gradient"]["hidden.3.linear"]["1"]["counts"]) == 256 * 256
    assert len(hist["weight"]["output"]["1"]["edges"]) == 31
    assert set(hist["grad_norm"]["input"]) == {"1"}
    cells = payload["experiments"]["grid"]["data"]["cells"]
    assert len(cells) == 36 and all(c["steps"] == 2 for c in cells.values())
    grid = payload["experiments"]["grid"]
    assert grid["tables"]["closed_loop"]["rows"] == []  # 2 steps per cell: not run
    assert grid["claims"][0]["reproduced"] is None


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


def test_fused_adam_is_keras_adam_and_weight_decay_is_l2():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 6)
    opt_a = make_optimizer(a.parameters(), "adam", 1e-2, weight_decay=0.1)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2, eps=1e-7, foreach=False)
    assert opt_a.defaults["fused"] and opt_a.defaults["eps"] == 1e-7
    assert [g["weight_decay"] for g in opt_a.param_groups] == [0.1, 0.0]
    for _ in range(3):
        opt_a.zero_grad()
        a(x).square().mean().backward()
        opt_a.step()
        opt_b.zero_grad()  # the L2 penalty (λ/2)·‖W‖² on the kernel only, written into the loss
        (b(x).square().mean() + 0.05 * b.weight.square().sum()).backward()
        opt_b.step()
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kind"):
        make_optimizer(a.parameters(), "rmsprop")


def test_spread_and_decide():
    assert spread([0.95, 0.97, 0.96], ".1%") == "median 96.0% (range 95.0%–97.0%, n=3)"
    assert spread([3.0, None], ".0f") == "3 (n=1, 1 of 2 none)"
    assert spread([None, None]) == "none (n=2)"
    assert spread([2.5]) == "2.5 (n=1)"
    assert decide([True, True, False]) is True
    assert decide([True, False]) is False  # a tie is not a majority
    assert decide([False, False], decidable=False) is None
    assert decide([]) is None
    c = Claim("c", "s", "m", None, "v")
    assert c.reproduced_text == "undecided (budget)" and c.seeds == 0 and c.behaved is None


def test_grad_jump_and_norm_growth():
    from gradwatch.record.records import LayerStat, StepRecord

    def rec(step: int, total: float) -> StepRecord:
        return StepRecord(step=step, total_norm=total, clip_coef=1.0,
                          layers={"a": LayerStat(norm=total)})

    # record steps are 0-based; blow-up steps count steps run (1-based): the 4th is record 3
    run = TrainRun("r", records=[rec(0, 2.0), rec(1, 4.0), rec(2, 6.0), rec(3, 400.0),
                                 rec(4, math.inf)])
    assert grad_jump(run, 4) == math.inf
    assert grad_jump(TrainRun("r", records=run.records[:4]), 4) == pytest.approx(100.0)
    assert math.isnan(grad_jump(run, None))
    assert norm_growth(TrainRun("r", records=run.records[:4])) == pytest.approx(200.0)
    assert norm_growth(run) == math.inf


def test_closed_loop_remedy_choice():
    run = TrainRun("r", findings=[
        {"kind": "vanishing", "layers": ["input"], "remedies": ["relu", "he_init", "residual"],
         "plans": [["relu", "he_init"], ["residual"]]},
        {"kind": "saturation", "layers": ["input"], "remedies": ["normalization", "he_init"]}])
    assert named_remedies(run) == (("relu", "he_init"), ("residual",), ("normalization",),
                                   ("he_init",))  # a finding without plans: codes alone
    cell = Cell("relu", "small_normal")
    assert apply_remedy(cell, "relu") is None  # already ReLU: changes nothing
    assert apply_remedy(cell, ("relu", "he_init")) == Cell("relu", "he")  # the rest still applies
    assert apply_remedy(Cell("sigmoid", "xavier"), ("relu", "he_init")) == Cell("relu", "he")
    assert apply_remedy(cell, ("warmup", "clip")) is None  # a plan applies whole or not at all
    assert apply_remedy(cell, "normalization") == Cell("relu", "small_normal", batch_norm=True)
    assert apply_remedy(cell, "lower_lr").lr == pytest.approx(1e-4)
    assert apply_remedy(cell, "fix_op") is None
    assert Cell("tanh", "he", residual=True, clip=1.0).name == "tanh/he/res/clip 1"
    assert named_remedies(TrainRun("q")) == ()  # no finding: nothing to apply


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


def test_dead_shares_against_plain_torch():
    from gradwatch.bench.dying import _unit, dead_shares
    from gradwatch.bench.nets import DeepMLP

    torch.manual_seed(0)
    model = DeepMLP(2, width=8, activation="relu", init="he", in_features=5)
    with torch.no_grad():
        model.hidden[0].linear.bias[:3] = -1e3  # three units of hidden.0 can never fire
    x = torch.randn(50, 5)
    shares = dead_shares(model, x)
    assert list(shares) == ["input", "hidden.0.linear", "hidden.1.linear"]  # not the head
    h0 = torch.relu(model.input(x))
    z1 = model.hidden[0].linear(h0)
    assert shares["hidden.0.linear"] == pytest.approx(float((z1.max(0).values <= 0).double().mean()))
    assert shares["hidden.0.linear"] >= 3 / 8
    assert [_unit(n) for n in ("hidden.2.act", "hidden.2.linear", "input_act", "output")] == \
        ["hidden.2", "hidden.2", "input", "output"]


def test_time_ratio_matches_an_unrolled_rnn():
    from gradwatch.bench.rnn import RecallNet, time_ratio

    torch.manual_seed(0)
    net = RecallNet(hidden=6, recurrent_scale=1.7)
    s = torch.linalg.svdvals(net.rnn.weight_hh_l0.detach())
    torch.testing.assert_close(s, torch.full((6,), 1.7), rtol=1e-5, atol=1e-5)
    x = torch.randn(4, 12, 1, requires_grad=True)
    net(x).square().sum().backward()
    # the same recurrence written out by hand: h_t = tanh(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh)
    r = net.rnn
    xs = x.detach().clone().requires_grad_(True)
    h = torch.zeros(4, 6)
    for t in range(12):
        h = torch.tanh(xs[:, t] @ r.weight_ih_l0.T + r.bias_ih_l0 + h @ r.weight_hh_l0.T + r.bias_hh_l0)
    net.head(h).squeeze(-1).square().sum().backward()
    g = xs.grad.double().norm(dim=(0, 2))
    assert time_ratio(x.grad) == pytest.approx(float(g[0] / g[-1]), rel=1e-5)


def test_summarize_records_counts_statuses_and_flags():
    from gradwatch.bench.common import summarize_records
    from gradwatch.record.records import LayerStat, Status, StepRecord

    def rec(step, a, b, spike=False):
        return StepRecord(step=step, total_norm=1.0, spike=spike,
                          layers={"a": LayerStat(norm=1.0, status=a), "b": LayerStat(norm=1.0, status=b)})

    ok, van, exp = Status.OK, Status.VANISHING, Status.EXPLODING
    s = summarize_records([rec(0, ok, ok), rec(1, van, ok), rec(2, van, exp, spike=True),
                           rec(3, ok, ok)])
    assert (s.steps, s.flagged_steps, s.first_flag_step, s.spikes) == (4, 2, 1, 1)
    assert s.layers == {"vanishing": {"a": 2}, "exploding": {"b": 1}}
    assert s.flagged and "vanishing: a" in s.text()
    assert summarize_records([]).text() == "none flagged (0 recorded steps)"


def test_closed_loop_follows_the_diagnosis_round_by_round(monkeypatch):
    import gradwatch.bench.grid as grid

    def fake_train(cell, ctx):  # ReLU + He trains; everything else stays broken
        good = cell.activation == "relu" and cell.init == "he"
        remedies = [] if good else (["relu", "he_init"] if cell.activation != "relu" else ["he_init"])
        return TrainRun(f"grid {cell.name}", test_acc=0.9 if good else 0.1,
                        findings=[] if good else [{"kind": "vanishing", "layers": ["input"],
                                                   "remedies": remedies}])  # codes alone

    def fake_train_plans(cell, ctx):  # the same, with the plans gradwatch now names
        run = fake_train(cell, ctx)
        for f in run.findings:
            f["plans"] = [f["remedies"]]
        return run

    monkeypatch.setattr(grid, "_train", fake_train)
    broken = {c.name: (c, fake_train(c, None)) for c in (Cell("sigmoid", "small_normal"),
                                                         Cell("sigmoid", "he"))}
    loop = grid._closed_loop(broken, None)
    assert (loop["broken"], loop["fixed_and_quiet"], loop["fixed_first_round"]) == (2, 2, 1)
    first, second = loop["rows"]
    assert first[3] == "relu → relu/small_normal: 10.0%; he_init → relu/he: 90.0%"
    assert first[4:] == ["yes", "yes", 2] and second[3] == "relu → relu/he: 90.0%"
    monkeypatch.setattr(grid, "_train", fake_train_plans)  # "ReLU with He init": one round
    loop = grid._closed_loop({c: (Cell(*c.split("/")), fake_train_plans(Cell(*c.split("/")), None))
                              for c in ("sigmoid/small_normal",)}, None)
    assert loop["rows"][0][3] == "relu+he_init → relu/he: 90.0%" and loop["fixed_first_round"] == 1
    stuck = grid._closed_loop({"x": (Cell("relu", "he", lr=1e-3), TrainRun(
        "x", test_acc=0.1, findings=[{"kind": "k", "layers": [],
                                                      "remedies": ["fix_op"]}]))}, None)
    assert stuck["fixed_and_quiet"] == 0 and stuck["rows"][0][3].startswith("no applicable remedy")


def test_a_net_stuck_on_a_saturated_output_looks_like_a_converged_one():
    """A net stuck on a saturated sigmoid output (the residual XOR nets that never leave the
    plateau) cannot be told from a converged net by its gradients: a 2-4-1 sigmoid net
    saturated near 1 gets gradients within 3x of each other whether its targets are 1 under
    cross-entropy (converged, loss ~1e-6) or 0 under squared error (stuck, loss 1). The
    converged one must stay quiet, so without the loss the stuck one is not flagged either;
    with the loss, a stuck net with no gradient left is (`scripts/stalled_vs_converged.py`)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "scripts" / "stalled_vs_converged.py"
    spec = importlib.util.spec_from_file_location("stalled_vs_converged", path)
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    converged, stuck = demo.case(1.0, "bce"), demo.case(0.0, "mse")
    assert converged["loss"] < 1e-5 and stuck["loss"] == pytest.approx(1.0, abs=1e-5)
    for key in ("head grad", "head output grad", "first layer grad"):
        assert 1 / 3 < stuck[key] / converged[key] < 3, key
    assert converged["findings"] == [] and stuck["findings"] == []
    # with the loss: a net with no gradient left at loss 1 is stalled; converged ones are not,
    # even watched from a converged start (its loss is its own highest, but the gradient is of
    # the loss's order); at bias 14 the stuck net still gets 1e-6 and is not called stalled
    assert converged["findings with the loss"] == stuck["findings with the loss"] == []
    assert demo.case(1.0, "mse")["findings with the loss"] == []
    dead, done = demo.case(0.0, "mse", bias=40.0), demo.case(1.0, "mse", bias=40.0)
    assert dead["head output grad"] == done["head output grad"] == 0.0
    assert dead["findings"] == done["findings"] == done["findings with the loss"] == []
    assert dead["findings with the loss"] == ["stalled"]


def test_deep_linear_figures_draw_the_clip_level_only_for_a_global_norm():
    from gradwatch.bench.linear import VARIANTS
    from gradwatch.plot import global_clip_level

    levels = {name: global_clip_level(make()) for name, make in VARIANTS.items()}
    assert levels == {"no clip": None, "per-tensor 1.0": None, "global norm 1.0": 1.0,
                      'gradwatch clip="auto"': None}
