"""The bench's XOR trainer against plain references: numpy per seed, and torch.autograd."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from gradwatch.bench.__main__ import main
from gradwatch.bench.common import BUDGETS
from gradwatch.bench.xor import claim_seeds
from gradwatch.bench.xor.core import XOR_T, XOR_X, XorBatch, XorTrial, init_params
from gradwatch.bench.xor.train import train_trials
from gradwatch.bench.xor.watch import (SourceAdam, SourceXorNet, load_snapshot, phase,
                                       snapshot_row)

PLAIN, RESID = (0.9, 0.999), (0.99, 0.9999)


class ReferenceAdam:
    """The source's Adam for one run, written out plainly (one array per parameter)."""

    def __init__(self, lr: float, beta1: float, beta2: float) -> None:
        self.lr, self.beta1, self.beta2, self.iter = lr, beta1, beta2, 0
        self.m: list[np.ndarray] | None = None
        self.v: list[np.ndarray] | None = None

    def update(self, params: list[np.ndarray], grads: list[np.ndarray]) -> None:
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
            self.v = [np.zeros_like(p) for p in params]
        self.iter += 1
        lr_t = self.lr * np.sqrt(1.0 - self.beta2 ** self.iter) / (1.0 - self.beta1 ** self.iter)
        for i in range(len(params)):
            self.m[i] = self.beta1 * self.m[i] + (1 - self.beta1) * grads[i]
            self.v[i] = self.beta2 * self.v[i] + (1 - self.beta2) * (grads[i] ** 2)
            params[i] -= lr_t * self.m[i] / (np.sqrt(self.v[i]) + 1e-7)


def reference_grads(params: list[np.ndarray], residual: bool, x: np.ndarray,
                    t: float) -> tuple[float, float, list[np.ndarray]]:
    """Output y, loss ½(y−t)² and its gradients for one pattern, layer by layer, 1-D arrays."""
    layers = [(params[i], params[i + 1]) for i in range(0, len(params), 2)]
    inputs, outs = [], []
    for k, (w, b) in enumerate(layers):
        inputs.append(x)
        s = 1 / (1 + np.exp(-(x @ w + b)))
        outs.append(s)
        x = x + s if residual and 0 < k < len(layers) - 1 else s
    loss = 0.5 * (x[0] - t) ** 2
    g = x - t
    grads: list[np.ndarray] = []
    for k in reversed(range(len(layers))):
        delta = g * (1 - outs[k]) * outs[k]
        grads = [np.outer(inputs[k], delta), delta] + grads
        g_in = layers[k][0] @ delta
        g = g_in + g if residual and 0 < k < len(layers) - 1 else g_in
    return float(x[0]), float(loss), grads


def _flat(trial: XorTrial) -> list[np.ndarray]:
    return [a.copy() for w, b in init_params(trial.depth, trial.seed) for a in (w, b)]


def _rows(batch: XorBatch, arr: np.ndarray, row: int, depth: int) -> list[np.ndarray]:
    """A trial's own parameters (no padding) from a batch-layout array, as 2-D / 1-D arrays."""
    used = list(range(depth + 1)) + [batch.depth + 1]
    out = []
    for k in used:
        off, fan_in, fan_out = batch.layout[k]
        out += [arr[row, off:off + fan_in * fan_out].reshape(fan_in, fan_out),
                arr[row, off + fan_in * fan_out:off + (fan_in + 1) * fan_out]]
    return out


MIXED = [XorTrial(3, False, 0, betas=PLAIN), XorTrial(1, True, 1, betas=RESID),
         XorTrial(2, True, 2, betas=RESID), XorTrial(3, False, 3, lr=5e-3, betas=PLAIN)]
SAME = [XorTrial(2, True, s, betas=RESID) for s in range(3)]


@pytest.mark.parametrize("trials", [MIXED, SAME], ids=["mixed settings", "one setting"])
def test_vectorised_adam_equals_reference_adam_exactly(trials):
    batch = XorBatch(trials)
    refs = [(ReferenceAdam(t.lr, *t.betas), _flat(t)) for t in trials]
    rng = np.random.default_rng(7)
    for _ in range(5):
        batch.grad[...] = rng.standard_normal(batch.grad.shape) * 10.0 ** rng.integers(-8, 1)
        batch.adam()
        for row, (t, (opt, params)) in enumerate(zip(trials, refs)):
            opt.update(params, _rows(batch, batch.grad, row, t.depth))
    for row, (t, (_, params)) in enumerate(zip(trials, refs)):
        for got, want in zip(_rows(batch, batch.theta, row, t.depth), params):
            np.testing.assert_array_equal(got, want)


def test_forward_backward_equals_torch_autograd():
    trials = MIXED + [XorTrial(5, True, 4, betas=RESID), XorTrial(5, False, 5)]
    batch = XorBatch(trials)
    for p in range(4):
        batch.reset_loss()
        batch.forward_backward(p)
        for row, t in enumerate(trials):
            params = [torch.tensor(a, requires_grad=True) for a in _flat(t)]
            x = torch.tensor(XOR_X[p])
            for k in range(0, len(params), 2):
                s = torch.sigmoid(x @ params[k] + params[k + 1])
                x = x + s if t.residual and 0 < k < len(params) - 2 else s
            loss = 0.5 * (x[0] - XOR_T[p]) ** 2
            loss.backward()
            assert batch.loss[row] == pytest.approx(loss.item(), rel=1e-13)
            for got, param in zip(_rows(batch, batch.grad, row, t.depth), params):
                np.testing.assert_allclose(got, param.grad.numpy(), rtol=1e-11, atol=1e-300)
            padding = batch.grad[row].copy()
            for got in _rows(batch, batch.grad, row, t.depth):
                got[...] = 0  # views: zero the trial's own entries, the padding must be 0 already
            assert not batch.grad[row].any()
            batch.grad[row] = padding


def test_training_equals_a_per_seed_reference_loop():
    trials = [XorTrial(2, False, 0), XorTrial(3, True, 1, betas=RESID)]
    epochs = 6
    results = train_trials(trials, epochs=epochs, snapshot_at=[9])
    batch = XorBatch(trials)  # the layout the snapshots are in
    for t, res in zip(trials, results):
        row = trials.index(t)
        params, opt = _flat(t), ReferenceAdam(t.lr, *t.betas)
        losses = []
        for epoch in range(epochs):
            total = 0.0
            for p in range(4):
                if 4 * epoch + p == 9:
                    theta = np.zeros_like(batch.theta)
                    theta[row] = res.snapshots[0].theta
                    for got, want in zip(_rows(batch, theta, row, t.depth), params):
                        np.testing.assert_allclose(got, want, rtol=1e-13)
                _, loss, grads = reference_grads(params, t.residual, XOR_X[p], XOR_T[p])
                total += loss
                opt.update(params, grads)
            losses.append(total)
        assert res.epochs_run == epochs and res.converged_epoch is None
        assert res.final_loss == pytest.approx(losses[-1], rel=1e-12)
        outputs = [reference_grads(params, t.residual, x, 0.0)[0] for x in XOR_X]
        np.testing.assert_allclose(res.outputs, outputs, rtol=1e-12)
        assert [s.update for s in res.snapshots] == [9, 4 * epochs]  # sampled, and the end


def test_a_converged_trial_stops_and_leaves_the_others_unchanged():
    fast, slow = XorTrial(1, False, 0), XorTrial(10, True, 1, betas=RESID)  # slow: loss ≈ 1
    epochs = 40
    alone = train_trials([fast], epochs=epochs, curve_epochs=range(1, epochs + 1))[0]
    tol = alone.curve[24]  # fast's loss at epoch 25: it stops there, or earlier at a lower one
    expected = next(e + 1 for e, loss in enumerate(alone.curve) if loss <= tol)
    s_alone = train_trials([slow], epochs=epochs, tol=tol, curve_epochs=range(1, epochs + 1))[0]
    assert expected <= 25 and tol < min(s_alone.curve)  # slow never stops here
    both = train_trials([fast, slow], epochs=epochs, tol=tol, curve_epochs=range(1, epochs + 1))
    f, s = both
    assert f.converged_epoch == expected and f.epochs_run == expected
    assert all(math.isnan(v) for v in f.curve[expected:])
    assert s.converged_epoch is None and s.epochs_run == epochs
    f_alone = train_trials([fast], epochs=expected, snapshot_at=[])[0]
    np.testing.assert_array_equal(f.outputs, f_alone.outputs)
    np.testing.assert_allclose(s.curve, s_alone.curve, rtol=1e-14)
    np.testing.assert_allclose(s.outputs, s_alone.outputs, rtol=1e-14)


def test_replay_model_and_source_adam_match_the_numpy_update():
    trial = XorTrial(3, True, 2, betas=RESID)
    res = train_trials([trial], epochs=3, snapshot_at=[5, 6])[0]
    before, after = res.snapshots[0], res.snapshots[1]
    model = SourceXorNet(3, residual=True).double()
    opt = SourceAdam(model.parameters(), lr=trial.lr, betas=trial.betas)
    load_snapshot(model, opt, trial, before, 3)
    np.testing.assert_array_equal(snapshot_row(model, trial, 3), before.theta)
    p = before.update % 4
    batch = XorBatch([trial])
    batch.theta[0] = before.theta
    batch.forward_backward(p)  # the numpy gradient at the snapshot
    y = model(torch.from_numpy(XOR_X[p]).reshape(1, 2))
    (0.5 * (y.reshape(()) - float(XOR_T[p])) ** 2).backward()
    grads = SourceXorNet(3, residual=True).double()
    for g, m in zip(grads.linears(), model.linears()):
        g.weight.data, g.bias.data = m.weight.grad, m.bias.grad
    np.testing.assert_allclose(snapshot_row(grads, trial, 3), batch.grad[0], rtol=1e-11)
    opt.step()
    np.testing.assert_allclose(snapshot_row(model, trial, 3), after.theta, rtol=1e-12)


def test_phase_labels_come_from_the_loss_trajectory():
    res = train_trials([XorTrial(1, False, 0)], epochs=5)[0]
    res.plateau_end, res.converged_epoch, res.epochs_run = 3000, 9000, 9000  # as if it had run
    assert phase(res, 1) == "stalled" and phase(res, 2000) == "stalled"
    assert phase(res, 2500) == "other" and phase(res, 3000) == "converging"
    res.converged_epoch = None
    assert phase(res, 5000) == "other"
    res.plateau_end, res.epochs_run = None, 100_000
    assert phase(res, 99_000) == "stalled" and phase(res, 99_500) == "other"


def test_bad_input_raises():
    with pytest.raises(ValueError, match="depth"):
        XorTrial(0, False, 0)
    with pytest.raises(ValueError, match="betas"):
        XorTrial(1, False, 0, betas=(1.0, 0.9))
    with pytest.raises(ValueError, match="epochs"):
        train_trials([XorTrial(1, False, 0)], epochs=0)
    with pytest.raises(ValueError, match="XorTrial"):
        XorBatch([])


def test_cli_xor_budget_flags_and_a_short_budget_never_says_no(tmp_path):
    assert main(["xor", "--quick", "--xor-epochs", "40", "--xor-depths", "1,5,10", "--seeds", "1",
                 "--out", str(tmp_path), "--no-progress"]) == 0
    payload = json.loads((tmp_path / "results.json").read_text())
    assert payload["meta"]["budget"]["xor_epochs"] == 40
    assert payload["meta"]["budget"]["xor_depths"] == [1, 5, 10]
    xor = payload["experiments"]["xor"]
    table = xor["data"]["table"]
    assert set(table) == {f"{k} {d}" for k in ("plain", "residual") for d in (1, 5, 10)}
    assert len(table["plain 10"]["seeds"]) == 4 and len(table["plain 5"]["seeds"]) == 1
    assert all(max(row["epochs_run"]) <= 40 for row in table.values())
    assert len(xor["claims"]) == 3
    assert all(c["reproduced"] is None for c in xor["claims"])  # 40 epochs decide nothing
    assert all(c.get("quantitative_reproduced") is None for c in xor["claims"])
    stalled = table["plain 10"]["gradwatch"]["stalled"]
    assert stalled["runs"] == 0 or stalled["replayed_updates"] > 0


def test_claim_seeds_follow_the_budget():
    assert claim_seeds(BUDGETS["default"]) >= 16 and BUDGETS["default"].xor_epochs == 100_000
    assert claim_seeds(BUDGETS["default"].with_seeds(20)) == 20
    short = dataclasses.replace(BUDGETS["default"], xor_epochs=200)
    assert claim_seeds(short) == max(4, short.seeds)
