"""GradWatch against plain torch: norms, order, hooks, training left untouched, state."""

from __future__ import annotations

import copy
import pickle

import pytest
import numpy as np
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import GradWatch, Status
from gradwatch.record.records import STATUS_CODES, LayerStat
from gradwatch.record.table import LayerColumns, LayerTable
from reference import output_grad_norms, param_grad_norms, train_step


def test_layer_and_total_norms_match_vector_norm():
    model = mlp()
    watch = GradWatch(model)
    x, y = batch()
    loss_of(model, x, y).backward()
    rec = watch.step()
    expected = param_grad_norms(model)
    assert list(rec.layers) == list(expected) == ["0", "2", "4"]
    for name, stat in rec.layers.items():
        assert stat.norm == pytest.approx(expected[name], rel=1e-6)
        assert stat.status is Status.OK
    total = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    assert rec.total_norm == pytest.approx(total.item(), rel=1e-6)
    assert rec.clip_coef == 1.0 and rec.first_nonfinite is None and rec.flagged == ()
    watch.close()


@pytest.mark.parametrize("inplace", [False, True])
def test_activation_norms_match_retain_grad_reference(inplace):
    model = mlp(inplace=inplace)
    reference = mlp()
    reference.load_state_dict(model.state_dict())
    x, y = batch()
    expected = output_grad_norms(reference, lambda: loss_of(reference, x, y).backward())
    assert list(expected) == ["0", "2", "4"]
    with GradWatch(model) as watch:
        loss_of(model, x, y).backward()
        rec = watch.step()
    for name, norm in expected.items():
        assert rec.layers[name].act_norm == pytest.approx(norm, rel=1e-6)


def test_monitoring_without_clipping_leaves_training_bit_identical():
    plain = mlp(inplace=True)
    watched = copy.deepcopy(plain)
    opt_a = torch.optim.Adam(plain.parameters(), lr=1e-2)
    opt_b = torch.optim.Adam(watched.parameters(), lr=1e-2)
    with GradWatch(watched, optimizer=opt_b, every=2):
        for step in range(6):
            x, y = batch(seed=step)
            for model, opt in ((plain, opt_a), (watched, opt_b)):
                train_step(model, opt, lambda m: loss_of(m, x, y))
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)


def test_every_records_only_every_nth_step_and_history_is_bounded():
    model = mlp()
    seen = []
    watch = GradWatch(model, every=3, history=2, loggers=[seen.append])
    results = []
    for step in range(7):
        model.zero_grad()
        loss_of(model, *batch(seed=step)).backward()
        results.append(watch.step())
    assert [r is not None for r in results] == [True, False, False, True, False, False, True]
    assert [r.step for r in seen] == [0, 3, 6]
    assert [r.step for r in watch.history] == [3, 6]
    assert watch.step_count == 7


def test_unrecorded_steps_run_without_forward_hooks_and_recorded_ones_are_exact():
    """every=3: the forward hooks are attached only for the forward of a recorded step, and
    those records' output-gradient norms equal retain_grad's."""
    model, reference = mlp(), mlp()
    reference.load_state_dict(model.state_dict())
    watch = GradWatch(model, every=3)
    hooked = []
    for step in range(7):
        hooked.append(any(m._forward_hooks for m in model.modules()))
        x, y = batch(seed=step)
        model.zero_grad()
        loss_of(model, x, y).backward()
        rec = watch.step()
        if rec is None:
            continue
        expected = output_grad_norms(reference, lambda: loss_of(reference, x, y).backward())
        for name, norm in expected.items():
            assert rec.layers[name].act_norm == pytest.approx(norm, rel=1e-6)
    assert hooked == [True, False, False, True, False, False, True]
    watch.close()
    assert not any(m._forward_hooks for m in model.modules())


def _hooks(model: nn.Module) -> dict[str, tuple[dict, dict]]:
    return {name: (dict(m._forward_hooks), dict(m._backward_hooks))
            for name, m in model.named_modules()}


def test_close_removes_every_hook_and_is_idempotent():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _hooks(model)
    watch = GradWatch(model, optimizer=opt)
    assert any(m._forward_hooks for m in model.modules())
    assert opt._optimizer_step_pre_hooks
    watch.close()
    watch.close()
    assert _hooks(model) == before
    assert not opt._optimizer_step_pre_hooks and not opt._optimizer_step_post_hooks
    with pytest.raises(RuntimeError, match="after close"):
        watch.step()


def test_exit_closes_even_when_the_block_raises():
    model = mlp()
    with pytest.raises(KeyError):
        with GradWatch(model) as watch:
            raise KeyError("boom")
    assert not any(m._forward_hooks for m in model.modules())
    assert "closed" in repr(watch)


def test_forgotten_watch_is_collected_and_unhooks():
    import gc

    model = mlp()
    GradWatch(model)
    gc.collect()
    assert not any(m._forward_hooks for m in model.modules())


def test_resnet18_with_inplace_relu():
    torchvision = pytest.importorskip("torchvision")
    model = torchvision.models.resnet18(num_classes=5)
    watch = GradWatch(model)
    logits = model(torch.randn(2, 3, 32, 32))
    logits.retain_grad()
    nn.functional.cross_entropy(logits, torch.tensor([0, 3])).backward()
    rec = watch.step()
    assert len(rec.layers) == len(list(m for m in model.modules()
                                       if list(m.parameters(recurse=False))))
    assert next(iter(rec.layers)) == "conv1" and list(rec.layers)[-1] == "fc"
    assert rec.layers["fc"].act_norm == pytest.approx(logits.grad.norm().item(), rel=1e-6)
    assert rec.layers["layer1.0.conv1"].norm == pytest.approx(
        model.layer1[0].conv1.weight.grad.norm().item(), rel=1e-6)
    assert all(s.act_norm is not None and s.act_norm > 0 for s in rec.layers.values())
    watch.close()


def test_summary_and_repr_are_readable():
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradWatch(model, optimizer=opt, clip=1e-3) as watch:
        for step in range(3):
            opt.zero_grad()
            loss_of(model, *batch(seed=step)).backward()
            opt.step()
    text = watch.summary()
    assert "3 steps, 3 recorded" in text and "clipped 3/3 (100.0%)" in text
    for name in ("0", "2", "4"):
        assert any(line.startswith(name + " ") for line in text.splitlines())
    assert "GlobalNorm(max_norm=0.001)" in repr(watch) and "recorded=3" in repr(watch)
    assert "nothing recorded" in GradWatch(mlp()).summary()


def test_record_layers_read_like_a_dict_and_pickle_as_one():
    """`StepRecord.layers` is built on first read (`gradwatch.record.table.LayerTable`): names in
    forward order, equal to the dict of the same `LayerStat`s, flagged/spikes without building,
    and a pickled or deep-copied record carries a plain dict."""
    model = mlp()
    with GradWatch(model) as watch:
        loss_of(model, *batch()).backward()
        rec = watch.step()
    layers = rec.layers
    assert isinstance(layers, LayerTable) and list(layers) == list(watch.layer_names)
    assert rec.flagged == () and rec.spikes == () and layers._built is None  # nothing built
    plain = {name: layers[name] for name in layers}
    assert all(isinstance(s, LayerStat) for s in plain.values())
    assert layers == plain and plain == dict(layers) and len(layers) == len(plain)
    first = next(iter(plain))
    assert first in layers and "nope" not in layers
    assert plain[first].norm == pytest.approx(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in
                                              model.get_submodule(first).parameters(
                                                  recurse=False)])).item(), rel=1e-6)
    for copied in (pickle.loads(pickle.dumps(rec)), copy.deepcopy(rec)):
        assert type(copied.layers) is dict and copied == rec
    vanishing = STATUS_CODES.index(Status.VANISHING)
    table = LayerTable(LayerColumns(
        ("a", "b"), np.array([1.0, 2.0]), np.array([np.nan, 0.5]), np.array([False, True]),
        np.array([0, vanishing], dtype=np.int8), np.array([-1, 0], dtype=np.int8),
        np.array([0.0, 1e-9]), ("small: {:.2g}",), np.array([0.0, 3.0]), np.array([0.0, 7.5]),
        {"update_ratio": np.array([np.nan, 0.25])}))
    assert table.marks() == [("b", Status.VANISHING, True)] and table._built is None
    assert table["b"].reason == "small: 1e-09; norm 2 is 3x its running mean (z=7.5)"
    assert table["b"].spike and table["b"].act_norm == 0.5 and table["a"].act_norm is None
    assert table["a"].values == {} and table["b"].values == {"update_ratio": 0.25}


def test_history_is_a_ring_of_columns_read_as_records():
    """`watch.history` keeps the last `history` records, oldest first, as a live sequence of
    columns; its records equal what the loggers saw (the same numbers, the same words), a
    layer that had no gradient at a step is absent from that record, and it grows past its
    first allocation without losing anything."""
    torch.manual_seed(0)
    model = mlp()
    seen: list = []
    watch = GradWatch(model, history=70, loggers=[seen.append])
    hist = watch.history
    for step in range(75):  # past the first 64-row allocation and past the capacity
        model.zero_grad()
        loss_of(model, *batch(seed=step)).backward()
        if step == 72:
            model[4].weight.grad = None  # one tensor without a gradient at this step
            model[4].bias.grad = None
        watch.step()
    watch.close()
    assert hist is watch.history and len(hist) == 70
    assert [r.step for r in hist] == list(range(5, 75)) and hist[-1].step == 74
    assert hist[0].step == 5 and hist[-70].step == 5 and [r.step for r in hist[-3:]] == [72, 73, 74]
    with pytest.raises(IndexError):
        hist[70]
    assert list(hist) == seen[5:]  # equal records: numbers, statuses, words, findings
    assert "4" not in hist[-3].layers and "4" in hist[-2].layers
    assert hist[-1].layers["0"].norm == pytest.approx(
        torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model[0].parameters()]))
        .item(), rel=1e-6)


def test_iterating_the_history_while_training_visits_the_held_records_or_raises():
    """An iterator made over the history visits the records held when it started, even as new
    ones come; when the ring drops one it has not reached, it raises instead of skipping it (it
    yielded step 7, then 11, 12, 13, 14 with no word)."""
    torch.manual_seed(0)
    model = mlp()
    watch = GradWatch(model, history=5)

    def step(seed):
        model.zero_grad()
        loss_of(model, *batch(seed=seed)).backward()
        watch.step()

    for k in range(12):
        step(k)
    it = iter(watch.history)
    assert next(it).step == 7
    step(12)  # records 8..11 are still held
    assert [next(it).step for _ in range(2)] == [8, 9]
    for k in range(13, 16):  # now the ring holds 11..15: 10 is gone before it was reached
        step(k)
    with pytest.raises(RuntimeError, match=r"list\(watch.history\)"):
        next(it)
    assert [r.step for r in list(watch.history)] == [11, 12, 13, 14, 15]
    watch.close()
