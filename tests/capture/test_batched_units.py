"""Unit statistics counted in batches (`UnitBatch`, `UnitWindow.alive_many`) equal the
per-output definitions, and hooks re-attached through a `Slot` keep their key."""

from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.capture.hooks import Slot
from gradwatch.capture.units import SAMPLE, UNIT_EVERY, UnitBatch, UnitWindow
from gradwatch.measure.batched import Segments


def _saturated_share(y: torch.Tensor, lo: float, hi: float) -> tuple[int, int]:
    """Plain torch: (outputs within 1% of a bound, outputs looked at) on the strided sample."""
    flat = y.detach().reshape(-1)
    flat = flat[::-(-flat.numel() // SAMPLE)]
    near = (flat <= lo + 0.01 * (hi - lo)) | (flat >= hi - 0.01 * (hi - lo))
    return int(near.sum()), flat.numel()


def test_the_batched_window_counts_what_the_per_site_window_counts():
    """Over measured steps whose sites change (one leaves, one arrives, one changes shape),
    `alive_many` gives the counts and the saved state of `alive` called site by site."""
    g = torch.Generator().manual_seed(0)
    batched, single = UnitWindow(), UnitWindow()
    layouts = [[(0, 1, 8), (1, 3, 5), (2, 5, 6)]] * 3 + [[(0, 1, 8), (2, 5, 6), (4, 7, 3)]] * 3 \
        + [[(0, 1, 8), (2, 5, 4), (4, 7, 3)]] * 3
    for step, layout in enumerate(layouts):
        batched.index = single.index = step
        tops = [torch.randn(n, generator=g) - 0.8 for _, _, n in layout]  # most units silent
        sites = [(layer, module) for layer, module, _ in layout]
        got = batched.alive_many(sites, tops)
        want = torch.stack([single.alive(site, top) for site, top in zip(sites, tops)])
        assert got.dtype == torch.float64 and torch.equal(got, want.double()), step
    assert batched.state_dict() == single.state_dict()


def test_a_site_seen_twice_in_one_forward_is_counted_in_call_order():
    window, reference = UnitWindow(), UnitWindow()
    batch = UnitBatch(window)
    relu = nn.ReLU()
    ys = [torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, -1.0]]),
          torch.tensor([[-1.0, 2.0, -1.0], [-1.0, -1.0, -1.0]])]
    for y in ys:
        batch.add("rectifier", y, relu, False, 0, (0, 1))
    entries, counts = batch.finish()
    want = [reference.alive((0, 1), y.amax(0)) for y in ys]
    assert [tuple(e) for e in entries] == [(0, "dead_frac", 3, (0, 1, 3))] * 2
    assert counts.tolist() == [float(c) for c in want] == [1.0, 2.0]


def test_batched_saturation_equals_plain_torch_and_skips_outputs_changed_in_place():
    torch.manual_seed(0)
    batch = UnitBatch(UnitWindow())
    outputs = [(nn.Tanh(), torch.tanh(3 * torch.randn(4, 16))),
               (nn.Sigmoid(), torch.sigmoid(4 * torch.randn(2, 3, 5))),
               (nn.Tanh(), torch.tanh(3 * torch.randn(7, 9))),
               (nn.Hardtanh(-2.0, 2.0), nn.functional.hardtanh(3 * torch.randn(10), -2.0, 2.0)),
               (nn.Sigmoid(), torch.sigmoid(4 * torch.randn(3 * SAMPLE + 5))),  # sampled
               (nn.Tanh(), torch.tanh(3 * torch.randn(6, 6)).double())]
    bounds = [(-1.0, 1.0), (0.0, 1.0), (-1.0, 1.0), (-2.0, 2.0), (0.0, 1.0), (-1.0, 1.0)]
    for layer, (module, y) in enumerate(outputs):
        batch.add("saturating", y, module, False, layer, (layer, 10 + layer))
    with torch.inference_mode():
        late = torch.tanh(3 * torch.randn(5, 5))
    batch.add("saturating", late, nn.Tanh(), False, 9, (9, 19))
    changed = torch.tanh(3 * torch.randn(8))
    batch.add("saturating", changed, nn.Tanh(), False, 8, (8, 18))
    changed.mul_(0.0)  # after the hook, before the batch is counted: left out
    entries, counts = batch.finish()
    got = {e.layer: (int(c), e.n) for e, c in zip(entries, counts.tolist())}
    assert all(e.statistic == "sat_frac" for e in entries) and 8 not in got
    want = {layer: _saturated_share(y, *b) for layer, ((_, y), b) in
            enumerate(zip(outputs, bounds))}
    want[9] = _saturated_share(late, -1.0, 1.0)
    assert got == want
    assert all(0 < c < n for c, n in got.values())  # the cases are not trivial
    assert len(batch) == 0 and batch.finish() == ([], None)


def test_slot_reattaches_under_its_first_key_and_registers_again_after_a_new_dict():
    module = nn.Linear(2, 2)
    calls = []
    slot = Slot(module, "_forward_hooks", module.register_forward_hook,
                lambda m, a, o: calls.append(1))
    slot.attach()
    key = slot.key
    assert list(module._forward_hooks) == [key]
    slot.detach()
    assert not module._forward_hooks
    module(torch.zeros(1, 2))
    slot.attach()
    assert slot.key == key and list(module._forward_hooks) == [key]
    module(torch.zeros(1, 2))
    module._forward_hooks = OrderedDict()  # replaced by someone else: registered afresh
    slot.attach()
    module(torch.zeros(1, 2))
    assert len(calls) == 2 and slot.key != key and list(module._forward_hooks) == [slot.key]
    slot.detach()
    assert not module._forward_hooks


@pytest.mark.parametrize("every", [1, 2])
def test_activation_modules_are_hooked_only_on_steps_with_unit_statistics(every):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    watch = GradWatch(model, every=every)
    hooked, measured = [], []
    for step in range(3 * UNIT_EVERY * every):
        hooked.append(bool(model[1]._forward_hooks))
        model(torch.randn(2, 3)).sum().backward()
        rec = watch.step()
        measured.append(rec is not None and "sat_frac" in rec.layers["0"].values)
        model.zero_grad()
    assert hooked == measured
    assert hooked == [s % every == 0 and s // every % UNIT_EVERY == 0
                      for s in range(3 * UNIT_EVERY * every)]
    watch.close()
    assert not any(m._forward_hooks for m in model.modules())


def test_segment_sums_off_the_cpu_path_equal_segment_reduce():
    """Accelerators sum the runs from one cumulative sum (no `segment_reduce` there): the same
    counts, checked on the CPU by calling that path directly."""
    g = torch.Generator().manual_seed(1)
    lengths = [1, 16, 3, 4096, 7]
    flat = (torch.rand(sum(lengths), generator=g) > 0.6).double()
    segments = Segments(lengths, flat.device)
    want = torch.stack([part.sum() for part in flat.split(lengths)])
    assert torch.equal(segments.sums(flat), want)
    assert torch.equal(segments.cumulative(flat), want)


def test_an_input_passed_to_a_layer_three_times_gets_one_gradient_hook():
    """Attention called as attn(x, x, x): one input-gradient event for the layer, not three
    (the three hooks would read the same gradient of the same tensor)."""
    torch.manual_seed(0)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(4, 8)
            self.attn = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.proj(x)
            return self.attn(h, h, h, need_weights=False)[0]

    model = Net()
    watch = GradWatch(model)
    model(torch.randn(2, 3, 4)).square().sum().backward()
    data = watch._watched.collector.data
    attn = [layer.name for layer in watch._watched.layers].index("attn")
    assert data.inp.layer.count(attn) == 1 and data.out.layer.count(attn) == 1
    rec = watch.step()
    assert rec.layers["attn"].act_norm > 0
    watch.close()


def test_forwards_under_inference_mode_count_and_do_not_break_the_window():
    """An armed step whose forwards include one under ``torch.inference_mode`` and one under
    ``no_grad`` (an evaluation between steps) runs, and the window's tensors stay usable after
    it (ec737e5 raised here: the window's tensor, made under inference mode, was updated in
    place outside it). A call site met several times in a step counts the units that fired
    on any of its forwards (plain torch on the three batches)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    ref = copy.deepcopy(model)  # (no optimizer: the same weights, and no hooks)
    watch = GradWatch(model)
    for step in range(UNIT_EVERY + 1):
        xs = [torch.randn(3, 4), torch.randn(5, 4), torch.randn(6, 4)]
        with torch.no_grad():
            fired = torch.stack([ref[1](ref[0](x)).gt(0).any(0) for x in xs]).any(0)
            first = ref[1](ref[0](xs[0])).gt(0).any(0)
        with torch.inference_mode():
            model(xs[0])
        with torch.no_grad():
            model(xs[1])
        model(xs[2]).sum().backward()
        rec = watch.step()
        model.zero_grad()
        if step == 0:
            assert rec.layers["0"].values["dead_frac"] == pytest.approx(
                1 - fired.double().mean().item())
            assert 1 - first.double().mean().item() == 0.5 != 1 - fired.double().mean().item()
    assert "dead_frac" in rec.layers["0"].values  # the second measured step ran too
    watch.close()
