"""Per-layer statistics against plain torch: a user-declared one end to end (records, logs,
summary, report) and the built-ins (update ratio, dead and saturated units, gradient through
time, weight norm, zero share)."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from torch import nn

from conftest import batch, loss_of, mlp
from gradwatch import CsvLogger, GradWatch, JsonlLogger, read_jsonl
from gradwatch.io.report import markdown_report
from gradwatch.capture.units import UNIT_EVERY, UNIT_WINDOW
from gradwatch.measure.statistics import Statistic, UpdateRatio, WeightNorm, ZeroFraction
from reference import norm, train_step


class GradMaxAbs(Statistic):
    """The README's example: the largest |gradient| entry of each layer."""

    name, label = "grad_max", "max |gradient|"

    def per_tensor(self, tensors):
        return torch.stack(torch._foreach_norm(tensors, math.inf))

    def combine(self, values):
        return max(values)


def _max_abs(module: nn.Module) -> float:
    return max(p.grad.abs().max().item() for p in module.parameters(recurse=False))


def test_a_user_statistic_reaches_records_logs_summary_and_report(tmp_path):
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    jsonl, csv_path = tmp_path / "run.jsonl", tmp_path / "run.csv"
    watch = GradWatch(model, optimizer=opt, statistics=[GradMaxAbs()],
                      loggers=[JsonlLogger(jsonl), CsvLogger(csv_path)])
    expected: list[dict[str, float]] = []
    for step in range(3):
        x, y = batch(seed=step)
        train_step(model, opt, lambda m: loss_of(m, x, y))
        expected.append({n: _max_abs(model.get_submodule(n)) for n in ("0", "2", "4")})
    watch.close()
    records = watch.history
    for rec, want in zip(records, expected):
        assert list(rec.layers) == list(want)
        for name, value in want.items():
            assert rec.layers[name].values["grad_max"] == value  # an exact max, no rounding
            assert rec.layers[name].to_dict()["grad_max"] == value
    logged = list(read_jsonl(jsonl))
    assert [r.to_dict() for r in logged] == [r.to_dict() for r in records]
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert "grad_max" in rows[0]
    assert [(int(r["step"]), r["layer"], float(r["grad_max"])) for r in rows] == [
        (step, name, value) for step, want in enumerate(expected) for name, value in want.items()]
    summary = watch.summary().splitlines()
    header = next(line for line in summary if line.startswith("layer "))
    column = header.split().index("grad_max")
    for name, value in expected[-1].items():
        row = next(line for line in summary if line.startswith(name + " ")).split()
        assert row[column] == f"{value:.3g}"
    report = markdown_report(logged)
    table = [line for line in report.splitlines() if line.startswith("| ")]
    cells = [c.strip() for c in table[-4].split("|")]
    at = cells.index("median grad_max")
    for k, (name, _) in enumerate(expected[-1].items()):
        median = sorted(e[name] for e in expected)[1]
        assert [c.strip() for c in table[-3 + k].split("|")][at] == f"{median:.3g}"


# ----------------------------------------------------------------------------- update ratio


def _layer_update_ratio(before: list[torch.Tensor], after: list[torch.Tensor],
                        sample: int | None = None) -> float:
    """‖Δθ‖/‖θ‖ over a layer in float64; with ``sample`` a tensor of more entries is read in
    16 runs of sample // 16 consecutive entries starting at k * (n // 16), each read entry
    standing for n / (entries read)."""
    num = den = 0.0
    for b, a in zip(before, after):
        b, a = b.double().flatten(), a.double().flatten()
        weight = 1.0
        if sample is not None and b.numel() > sample:
            n = b.numel()
            at = torch.tensor([k * (n // 16) + j for k in range(16) for j in range(sample // 16)])
            b, a = b[at], a[at]
            weight = n / b.numel()
        num += weight * (a - b).square().sum().item()
        den += weight * b.square().sum().item()
    return math.sqrt(num / den)


def test_update_ratio_is_the_step_over_the_weights_before_it():
    """Exact (to float32 accumulation) for tensors up to `UpdateRatio.sample` entries; the
    documented strided estimate for larger ones."""
    sample = UpdateRatio.sample
    assert 80 * 80 > sample >= 80
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 80), nn.ReLU(),
                          nn.Linear(80, 80), nn.ReLU(), nn.Linear(80, 3))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(2 * UNIT_EVERY + 1):
            x, y = batch(seed=step)
            before = {n: [p.detach().clone() for p in m.parameters()]
                      for n, m in model.named_children() if isinstance(m, nn.Linear)}
            train_step(model, opt, lambda m: loss_of(m, x, y))
            rec = watch.history[-1]
            if step >= UNIT_EVERY and step % UNIT_EVERY:  # measured on the first 4 recorded
                # steps, then on every UNIT_EVERY-th only
                assert all("update_ratio" not in s.values for s in rec.layers.values())
                continue
            for name, b in before.items():
                a = list(model.get_submodule(name).parameters())
                ratio = rec.layers[name].values["update_ratio"]
                exact = _layer_update_ratio(b, a)
                if all(t.numel() <= sample for t in b):
                    assert ratio == pytest.approx(exact, rel=1e-6)
                else:  # "4": 6400 weights, read at a stride
                    assert ratio == pytest.approx(_layer_update_ratio(b, a, sample), rel=1e-6)
                    assert ratio == pytest.approx(exact, rel=0.1)
                    assert ratio != exact
    plain = mlp()
    manual = GradWatch(plain)  # without optimizer= there is no step to measure across
    loss_of(plain, *batch()).backward()
    assert all("update_ratio" not in s.values for s in manual.step().layers.values())


# ----------------------------------------------------------------------------- units


class _Units(nn.Module):
    """A conv with a ReLU (unit: channel), a Linear with a ReLU (unit: feature), a Linear with
    a Sigmoid and one with a Tanh; biases pushed so units die and outputs saturate."""

    def __init__(self):
        super().__init__()
        self.conv, self.act0 = nn.Conv2d(2, 6, 3), nn.ReLU()
        self.fc1, self.act1 = nn.Linear(6 * 16, 10), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(10, 10), nn.Sigmoid()
        self.fc3, self.act3 = nn.Linear(10, 4), nn.Tanh()
        with torch.no_grad():
            self.conv.bias[:2].fill_(-50.0)
            self.fc1.bias[:3].fill_(-50.0)
            self.fc2.weight.mul_(30.0)
            self.fc3.weight.mul_(8.0)

    def forward(self, x):
        h = self.act0(self.conv(x)).flatten(1)
        return self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(h))))))


def test_dead_and_saturated_units_match_plain_torch():
    """A unit is dead when it fired on none of the inputs of the last `UNIT_WINDOW` measured
    steps: compared with plain torch over the same batches."""
    torch.manual_seed(0)
    model = _Units()
    ref = copy.deepcopy(model)
    steps = UNIT_EVERY * (UNIT_WINDOW - 1) + 1  # the last step is the window's last measured
    batches = [torch.randn(5, 2, 6, 6) for _ in range(steps)]
    with GradWatch(model) as watch:
        recs = []
        for x in batches:
            model(x).pow(2).sum().backward()
            recs.append(watch.step())
    rec, x = recs[-1], batches[-1]
    with torch.no_grad():  # at the first step the window is that step's batch alone
        first = ref.act1(ref.fc1(ref.act0(ref.conv(batches[0])).flatten(1)))
    assert recs[0].layers["fc1"].values["dead_frac"] == pytest.approx(
        1 - (first > 0).any(0).double().mean().item(), rel=1e-7)
    measured = torch.cat(batches[::UNIT_EVERY])
    with torch.no_grad():  # units over the window's batches, saturation on the last batch
        c = ref.act0(ref.conv(measured))
        h1 = ref.act1(ref.fc1(c.flatten(1)))
        s2 = ref.act2(ref.fc2(ref.act1(ref.fc1(ref.act0(ref.conv(x)).flatten(1)))))
        t3 = ref.act3(ref.fc3(s2))
    dead_conv = 1 - (c > 0).any(0).any(-1).any(-1).double().mean().item()  # per channel
    dead_fc = 1 - (h1 > 0).any(0).double().mean().item()  # per feature, over the window
    sat_sigmoid = ((s2 <= 0.01) | (s2 >= 0.99)).double().mean().item()  # 1% of (0, 1)
    sat_tanh = ((t3 <= -1 + 0.02) | (t3 >= 1 - 0.02)).double().mean().item()  # 1% of (-1, 1)
    assert dead_conv >= 2 / 6 and dead_fc >= 3 / 10 and 0 < sat_sigmoid < 1 and 0 < sat_tanh < 1
    # statistics other than the norms are float32 columns: equal to float32 precision
    assert rec.layers["conv"].values["dead_frac"] == pytest.approx(dead_conv, rel=1e-7)
    assert rec.layers["fc1"].values["dead_frac"] == pytest.approx(dead_fc, rel=1e-7)
    assert rec.layers["fc2"].values["sat_frac"] == pytest.approx(sat_sigmoid, rel=1e-7)
    assert rec.layers["fc3"].values["sat_frac"] == pytest.approx(sat_tanh, rel=1e-7)
    assert "sat_frac" not in rec.layers["fc1"].values
    assert "dead_frac" not in rec.layers["fc2"].values


@pytest.mark.parametrize("between", ["batchnorm", "weight_norm", "pool"])
def test_a_relu_after_a_conv_counts_channels_whatever_runs_in_between(between):
    """Conv → BatchNorm → ReLU, a bias-free convolution whose weight is a parametrization
    (``weight_norm``: its layer is the parametrization, which completes before the
    convolution), and Conv → MaxPool → ReLU: the ReLU's units are the convolution's channels,
    as right after a convolution. Half of the 8 channels never fire (on inputs in [0, 1), a
    bias of -100 or all-negative weights); plain torch counts the dead channels over the
    window."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1, bias=between != "weight_norm")
    mids = []
    if between == "weight_norm":
        conv = nn.utils.parametrizations.weight_norm(conv)
        with torch.no_grad():
            v = conv.parametrizations.weight.original1
            v[:4] = -v[:4].abs() - 0.1
    elif between == "batchnorm":
        mids = [nn.BatchNorm2d(8)]
        with torch.no_grad():
            mids[0].bias[:4] = -100.0
    else:
        mids = [nn.MaxPool2d(2)]
        with torch.no_grad():
            conv.bias[:4] = -100.0
    act = nn.ReLU()
    model = nn.Sequential(conv, *mids, act, nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    fired = torch.zeros(8, dtype=torch.bool)

    def note(module, args, out):
        fired.logical_or_(out.detach().amax(dim=(0, 2, 3)) > 0)

    spy = act.register_forward_hook(note)
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(UNIT_EVERY * UNIT_WINDOW + 1):
            opt.zero_grad()
            nn.functional.cross_entropy(model(torch.rand(16, 3, 12, 12)),
                                        torch.randint(0, 4, (16,))).backward()
            opt.step()
    spy.remove()
    rec = [r for r in watch.history if any("dead_frac" in v.values
                                           for v in r.layers.values())][-1]
    shares = [v.values["dead_frac"] for v in rec.layers.values() if "dead_frac" in v.values]
    assert (~fired).sum().item() == 4
    assert shares == [0.5]


def test_a_unit_silent_on_one_batch_is_alive_while_it_fired_within_the_window():
    """Identity layer + ReLU: measured step m feeds inputs where only unit m fires (units 0-3),
    then only negative inputs. Each batch alone has 3 of 4 units silent; over the window (the
    steps measured so far, at the start) a unit is dead only once its last firing left it."""
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(4))
        model[0].bias.zero_()
    shares = {}
    with GradWatch(model) as watch:
        for step in range(UNIT_EVERY * 7 + 1):
            m = step // UNIT_EVERY
            x = -torch.ones(3, 4)
            if m < 4:
                x[:, m] = 1.0
            model(x).sum().backward()
            rec = watch.step()
            if "dead_frac" in rec.layers["0"].values:
                shares[m] = rec.layers["0"].values["dead_frac"]
    # unit m last fired at measured step m (m < 4)
    assert shares == {0: 0.75, 1: 0.5, 2: 0.25, 3: 0.0, 4: 0.25, 5: 0.5, 6: 0.75, 7: 1.0}


# ----------------------------------------------------------------------------- through time


class _Recurrent(nn.Module):
    def __init__(self, kind: type[nn.RNNBase], batch_first: bool, read: int = -1):
        super().__init__()
        self.rnn = kind(3, 5, batch_first=batch_first)
        self.head = nn.Linear(5, 1)
        self.batch_first, self.read = batch_first, read  # the time step the head reads

    def forward(self, x):
        out = self.rnn(x)[0]
        return self.head(out[:, self.read] if self.batch_first else out[self.read])


@pytest.mark.parametrize("read", [-1, 5])  # the last step, or step 5 of 9 (a padded tail)
@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_time_ratio_is_the_first_over_the_last_reached_step_input_gradient(kind, batch_first, read):
    """‖∂L/∂x_0‖ over ‖∂L/∂x_t‖ of the last step t that gets any: the last the loss reads. With a padded tail
    (the head reads step 5), steps 6-8 get exactly 0: the ratio over the last step was 0, a
    false vanishing_through_time on every right-padded classifier."""
    torch.manual_seed(0)
    model = _Recurrent(kind, batch_first, read)
    ref = copy.deepcopy(model)
    x = torch.randn(2, 9, 3) if batch_first else torch.randn(9, 2, 3)
    with GradWatch(model) as watch:
        model(x).sum().backward()
        rec = watch.step()
    leaf = x.clone().requires_grad_()
    ref(leaf).sum().backward()
    dim = 1 if batch_first else 0
    per_step = [norm([leaf.grad.select(dim, t)]) for t in range(9)]
    assert (per_step[-1] == 0.0) == (read == 5)
    last = max(t for t in range(9) if per_step[t] > 0)
    assert last == (8 if read == -1 else 5)
    expected = per_step[0] / per_step[last]
    assert 0 < expected < 1
    assert rec.layers["rnn"].values["time_ratio"] == pytest.approx(expected, rel=1e-6)
    assert x.grad is None  # the user's input was left alone
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=0)


# ----------------------------------------------------------------------------- opt-in


def _grads_of(model: nn.Module, name: str) -> list[torch.Tensor]:
    return [p.grad for p in model.get_submodule(name).parameters(recurse=False)]


def _relu_net() -> nn.Sequential:
    torch.manual_seed(0)
    model = mlp()
    with torch.no_grad():
        model[0].bias[:3].fill_(-50.0)  # dead units: zero rows in 0, zero columns in 2
    return model


def test_weight_norm_is_the_float64_norm_of_the_weights_at_the_step():
    model = _relu_net()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    with GradWatch(model, optimizer=opt, statistics=[WeightNorm(), ZeroFraction()]) as watch:
        for step in range(2):
            x, y = batch(seed=step)
            weights = {n: norm(model.get_submodule(n).parameters()) for n in ("0", "2", "4")}
            train_step(model, opt, lambda m: loss_of(m, x, y))
            rec = watch.history[-1]
            for name, value in weights.items():
                assert rec.layers[name].values["weight_norm"] == pytest.approx(value, rel=1e-6)


def _zero_share(tensors: list[torch.Tensor]) -> float:
    return sum((t == 0).sum().item() for t in tensors) / sum(t.numel() for t in tensors)


def test_zero_fraction_is_the_share_of_zero_entries_over_the_layer():
    model = _relu_net()
    with GradWatch(model, statistics=[ZeroFraction()]) as watch:
        loss_of(model, *batch()).backward()
        rec = watch.step()
    for name in ("0", "2", "4"):
        assert rec.layers[name].values["zero_frac"] == pytest.approx(
            _zero_share(_grads_of(model, name)), rel=1e-7)  # a float32 column


def test_update_sums_on_accelerators_match_the_cpu_segment_sums():
    """The tracker's accelerator path (index_add_, no host read of the lengths) gives the CPU
    path's per-tensor sums, checked here on the CPU by forcing it."""
    from gradwatch.measure.updates import UpdateTracker

    torch.manual_seed(0)
    params = [torch.randn(300, 20), torch.randn(7), torch.randn(1000), torch.randn(3, 3)]
    after = [p + 0.01 * torch.randn_like(p) for p in params]
    sums = []
    for force_index in (False, True):
        live = [p.clone() for p in params]
        tracker = UpdateTracker(live, [0, 0, 1, 2], 3, 256)
        tracker.before()
        if force_index:
            sizes = [v.numel() for v in tracker._views]
            tracker._index = torch.repeat_interleave(torch.arange(len(sizes)),
                                                     torch.tensor(sizes))
        for p, a in zip(live, after):
            p.copy_(a)
        sums.append(tracker.after_device())
    assert sums[0].shape == (2, 4)
    torch.testing.assert_close(sums[1], sums[0], rtol=1e-6, atol=0)


# ------------------------------------------------------------------ a statistic that misbehaves
class _Count(Statistic):
    """Returns ``len(tensors) + extra`` values, or a 0-d tensor with ``extra=None``."""

    label = "count"

    def __init__(self, name: str, extra: int | None) -> None:
        self.name, self.extra = name, extra

    def per_tensor(self, tensors):
        if self.extra is None:
            return torch.tensor(1.0)
        if isinstance(self.extra, tuple):  # a shape made of the tensor count n
            shape = tuple(len(tensors) * -d if d < 0 else d for d in self.extra)
            return torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
        return torch.arange(len(tensors) + self.extra, dtype=torch.float32)


def _one_step(stat: Statistic) -> GradWatch:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))  # 4 tensors
    watch = GradWatch(model, statistics=[stat])
    model(torch.randn(5, 4)).sum().backward()
    try:
        watch.step()
    finally:
        watch.close()
    return watch


@pytest.mark.parametrize("extra, got", [(3, "7 values (shape (7,))"), (-1, "3 values (shape (3,))"),
                                        (None, "1 value (shape ())"),
                                        ((-2,), "8 values (shape (8,))"),
                                        ((1, -1, 2), "8 values (shape (1, 4, 2))")])
def test_per_tensor_with_a_wrong_count_is_refused_naming_the_statistic(extra, got):
    """r_stat_shape: 7 values were recorded as garbage; 3 or a 0-d tensor gave `range() arg 3
    must not be zero`; 2n values in one row, or a (1, n, 2) tensor, passed the count check
    (a multiple of n) and mixed the tensors' values."""
    with pytest.raises(ValueError) as err:
        _one_step(_Count("odd_count", extra))
    assert str(err.value) == (
        f"Expected statistic 'odd_count' (_Count) to return one value per tensor from "
        f"per_tensor: 4 values for the 4 tensors it was given (or a (4, k) tensor), but it "
        f"returned {got}; return e.g. torch.stack([f(t) for t in tensors]).")


def test_per_tensor_with_one_value_or_row_per_tensor_is_recorded():
    watch = _one_step(_Count("index", 0))  # values 0, 1 (layer "0"), 2, 3 (layer "2")
    assert {k: s.values["index"] for k, s in watch.history[-1].layers.items()} == {
        "0": pytest.approx(1.0), "2": pytest.approx(math.sqrt(13.0))}


class _BadCombine(Statistic):
    name, label = "bad_combine", "bad"

    def __init__(self, result: object) -> None:
        self.result = result

    def per_tensor(self, tensors):
        return torch.ones(len(tensors))

    def combine(self, values):
        return self.result


@pytest.mark.parametrize("result, shown", [
    ("big", "str ('big')"), ([1.0, 2.0], "list ([1.0, 2.0])"), (True, "bool (True)"),
    (torch.tensor(2.0), "Tensor (tensor(2.))")])
def test_combine_returning_a_non_number_is_refused_naming_the_statistic(result, shown):
    with pytest.raises(TypeError) as err:
        _one_step(_BadCombine(result))
    assert str(err.value) == (
        f"Expected statistic 'bad_combine' (_BadCombine) to return a number or None from "
        f"combine, but it returned {shown}; return a Python float, e.g. float(...) of a tensor.")


def test_combine_returning_none_or_a_numpy_number_is_recorded():
    import numpy as np

    assert all("bad_combine" not in s.values for s in _one_step(_BadCombine(None))
               .history[-1].layers.values())  # None: not measured
    got = _one_step(_BadCombine(np.float32(0.5))).history[-1].layers
    assert {k: s.values["bad_combine"] for k, s in got.items()} == {"0": 0.5, "2": 0.5}


@pytest.mark.parametrize("name", ["dead_frac", "update_ratio", "sat_frac", "time_ratio",
                                  "step", "layer", "total_norm"])
def test_a_statistic_cannot_take_a_name_gradwatch_reads_or_writes(name):
    """A user statistic named dead_frac replaced the measured one and the rules read it (a
    healthy MLP was diagnosed dead_units); one named step or layer overwrote the CSV's
    columns. Refused, naming the statistic and the fix."""
    class Clash(Statistic):
        def per_tensor(self, tensors):
            return torch.stack([t.abs().max() for t in tensors])

    stat = Clash()
    stat.name = name
    with pytest.raises(ValueError, match=rf"not one of gradwatch's own .*but got '{name}' "
                                         rf"\(Clash\); rename it"):
        GradWatch(mlp(), statistics=[stat])


def test_zero_fraction_counts_sparse_and_complex_entries_without_warnings():
    """It warned (a tensor copied with new_tensor; complex cast to real) on every recorded step
    of a sparse or complex model; the counts were and are those of plain torch."""
    import warnings
    dense = torch.tensor([0.0, 1.0, 0.0])
    sparse = torch.sparse_coo_tensor([[0, 2]], [0.0, 3.0], (5,))
    complex_ = torch.tensor([0j, 1j, 0j, 2 + 0j])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rows = ZeroFraction().per_tensor([dense, sparse, complex_])
    assert rows.tolist() == [[2.0, 3.0], [5 - 1, 5.0], [2.0, 4.0]]


def test_bfloat16_outputs_near_the_saturation_band_are_counted_exactly():
    """bfloat16 sigmoid outputs in (0.0100, 0.0107]: all more than 1% from either bound, so
    none is saturated (counted in float64 on plain torch); in bfloat16 arithmetic 0.5 - y and
    0.49 round to the same value and every one would count."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.Sigmoid(), nn.Linear(64, 2)).bfloat16()
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(torch.logit(torch.linspace(0.01005, 0.0107, 64)).bfloat16())
    seen = {}

    def keep(module, args, out):
        seen["y"] = out.detach().double()

    model[1].register_forward_hook(keep)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    with GradWatch(model, optimizer=opt) as watch:
        opt.zero_grad()
        model(torch.randn(8, 4).bfloat16()).float().square().mean().backward()
        opt.step()
    y = seen["y"]
    assert y.min().item() > 0.01
    plain = ((y - 0.5).abs() >= 0.49).double().mean().item()
    assert plain == 0.0
    assert watch.history[0].layers["0"].values["sat_frac"] == plain


def test_the_dead_unit_window_goes_on_when_another_layer_is_frozen():
    """Freezing the first layer rebuilds the watched set; the other layers' dead-unit windows
    go on: layer 2's share at steps 8 and 12 is counted over the measured steps so far, as
    plain torch counts it, not over the step's batch alone."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    tops = {}

    def keep(module, args, out):
        tops[len(tops)] = out.detach().amax(0) > 0

    model[3].register_forward_hook(keep)
    data = [(torch.randn(4, 10), torch.randint(0, 3, (4,))) for _ in range(3 * UNIT_EVERY + 1)]
    with GradWatch(model, optimizer=opt) as watch:
        for i, (x, y) in enumerate(data):
            if i == UNIT_EVERY + 2:
                model[0].requires_grad_(False)
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    assert "0" not in watch.history[-1].layers
    for step in (2 * UNIT_EVERY, 3 * UNIT_EVERY):
        window = [s for s in range(0, step + 1, UNIT_EVERY)][-UNIT_WINDOW:]
        alive = torch.stack([tops[s] for s in window]).any(0)
        plain = 1 - alive.double().mean().item()
        assert plain != 1 - tops[step].double().mean().item()  # the window matters here
        assert watch.history[step].layers["2"].values["dead_frac"] == pytest.approx(plain)
