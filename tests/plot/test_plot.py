"""gradwatch.plot: the plotted data equals the records, edge cases draw instead of crashing."""

from __future__ import annotations

import math
import subprocess
import sys
from enum import Enum
from types import SimpleNamespace

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.image import AxesImage  # noqa: E402

from gradwatch.plot import plot_flow, plot_heatmap, plot_norms  # noqa: E402
from gradwatch.record.records import LayerStat, Status, StepRecord  # noqa: E402

NAN, INF = float("nan"), float("inf")
NAMES = ["embed", "blocks.0.fc", "blocks.1.fc", "head"]
# step -> per-layer parameter-gradient norms; step 4: NaN born in blocks.1.fc, step 6: a zero norm
NORMS = {0: [1e-8, 1e-3, 1e-2, 0.5],
         2: [2e-8, 2e-3, 3e-2, 0.7],
         4: [NAN, NAN, NAN, 0.9],
         6: [0.0, 4e-3, 5e4, 1.1]}


def _status(norm: float) -> Status:
    if not math.isfinite(norm):
        return Status.NONFINITE
    return Status.VANISHING if norm < 1e-7 else Status.EXPLODING if norm > 1e4 else Status.OK


def _records() -> list[StepRecord]:
    out = []
    for step, norms in NORMS.items():
        layers = {n: LayerStat(norm=v, act_norm=None if i == 0 else 10 * v, status=_status(v),
                               spike=(step == 6 and n == "blocks.1.fc"))
                  for i, (n, v) in enumerate(zip(NAMES, norms))}
        total = math.sqrt(sum(v * v for v in norms))
        out.append(StepRecord(step=step, total_norm=total, clip_coef=min(1.0, 1.0 / total)
                              if math.isfinite(total) else 0.0, layers=layers,
                              first_nonfinite="blocks.1.fc" if step == 4 else None,
                              spike=step == 6, skipped=step == 4))
    return out


def _line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def _collection(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def _edge_x(ax, label):
    return sorted(_collection(ax, label).get_offsets()[:, 0].tolist())


# ------------------------------------------------------------------------------------ plot_flow
def test_flow_lines_equal_norms_for_default_first_middle_last_steps():
    fig = plot_flow(_records())
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    for step in (0, 4, 6):  # first, middle (index 2 of 4) and last
        line = _line(ax, f"step {step}")
        np.testing.assert_array_equal(line.get_xdata(), np.arange(4))
        expected = [v if math.isfinite(v) and v > 0 else NAN for v in NORMS[step]]
        np.testing.assert_allclose(line.get_ydata(), expected)  # NaN where a log axis cannot draw
    assert [t.get_text() for t in ax.get_xticklabels()] == NAMES
    assert "step 2" not in [ln.get_label() for ln in ax.get_lines()]


def test_flow_marks_nonfinite_zero_flagged_and_birth_layer():
    ax = plot_flow(_records(), steps=[4, 6]).axes[0]
    assert _edge_x(ax, "non-finite (drawn at top)") == [0, 1, 2]
    assert _edge_x(ax, "zero norm (drawn at bottom)") == [0]
    exploding = _collection(ax, "flagged exploding").get_offsets()
    np.testing.assert_allclose(exploding, [[2, 5e4]])
    born = [ln for ln in ax.get_lines() if ln.get_label().startswith("NaN/Inf born here")]
    assert len(born) == 1 and list(born[0].get_xdata()) == [2, 2]
    assert "blocks.1.fc" in born[0].get_label()


def _absolute(ax):
    return {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().startswith("absolute")}


def _span_y(ax, patch):
    """The data-y extent of a shaded band (axhspan: x in axes units, y in data units)."""
    ys = (patch.get_transform() - ax.transData).transform(patch.get_path().vertices)[:, 1]
    return float(ys.min()), float(ys.max())


def test_flow_draws_absolute_bounds_as_labelled_lines():
    th = SimpleNamespace(vanishing=1e-7, exploding=1e4)  # no relative bounds: none drawn
    ax = plot_flow(_records(), steps=2, thresholds=th, exploding=100.0).axes[0]  # 2e-8 .. 0.7
    lines = _absolute(ax)
    assert set(lines) == {"absolute vanishing bound: norm < 1e-07",
                          "absolute exploding bound: norm > 100"}
    assert list(lines["absolute vanishing bound: norm < 1e-07"].get_ydata()) == [1e-7, 1e-7]
    assert not ax.patches  # no band: the shaded bands are the relative bounds
    low, high = ax.get_ylim()
    assert low < 2e-8 and high > 100  # data and both bounds are visible (within 3 decades)
    # step 0 tops out at 0.5: the exploding bound 1e4 is 4.3 decades up, named but not drawn
    ax = plot_flow(_records(), steps=0, thresholds=th).axes[0]
    np.testing.assert_allclose(_collection(ax, "flagged vanishing").get_offsets(), [[0, 1e-8]])
    lines = _absolute(ax)
    assert set(lines) == {"absolute vanishing bound: norm < 1e-07",
                          "absolute exploding bound: norm > 10000, above the axis"}
    assert len(lines["absolute exploding bound: norm > 10000, above the axis"].get_ydata()) == 0
    assert ax.get_ylim()[1] == pytest.approx(0.5 * 10 ** 0.6)
    labels = ax.get_legend_handles_labels()[1]
    assert "absolute exploding bound: norm > 10000, above the axis" in labels
    # explicit floats override the object
    ax = plot_flow(_records(), steps=0, thresholds=th, exploding=10.0).axes[0]
    assert "absolute exploding bound: norm > 10" in _absolute(ax)


def test_flow_relative_band_is_relative_vanishing_times_the_output_sides_median():
    from gradwatch import Thresholds

    th = Thresholds()  # relative_vanishing 1e-3, relative_exploding 1e3
    names = [f"l{i}" for i in range(7)]
    norms = {0: [1e-6, 1e-5, 1e-4, 1e-2, 0.2, 0.4, 3.0], 5: [2e-6, 2e-5, 2e-4, 2e-2, 0.1, 0.2, 0.6]}
    recs = [StepRecord(step=s, total_norm=1.0, layers={n: LayerStat(norm=v) for n, v in
                                                       zip(names, vals)})
            for s, vals in norms.items()]
    ax = plot_flow(recs, thresholds=th).axes[0]
    # 7 layers: the output side is the last 7 // 3 = 2, median (0.2 + 0.6) / 2 at step 5
    band = next(p for p in ax.patches if p.get_label().startswith("relative vanishing band"))
    assert _span_y(ax, band)[1] == pytest.approx(1e-3 * 0.4)
    assert "0.001 × that median (0.0004)" in band.get_label()
    bar = _collection(ax, "output side's median (last third), step 5: 0.4")
    (x0, y0), (x1, y1) = bar.get_segments()[0]
    assert (y0, y1) == (pytest.approx(0.4), pytest.approx(0.4)) and x0 < 5 and x1 > 6
    earlier = _line(ax, "same bounds at earlier steps (dashed)")  # step 0: median 1.7
    assert earlier.get_ydata()[0] == pytest.approx(1e-3 * 1.7)
    # roles: only weight layers are compared (a norm layer at the end changes nothing)
    roles = dict.fromkeys(names, "weight") | {"l6": "norm"}
    ax = plot_flow(recs[1:], thresholds=th, roles=roles).axes[0]
    band = next(p for p in ax.patches if p.get_label().startswith("relative vanishing band"))
    assert _span_y(ax, band)[1] == pytest.approx(1e-3 * 0.15)  # l4, l5: (0.1 + 0.2) / 2
    # explicit numbers (a log header's thresholds) instead of a Thresholds
    ax = plot_flow(recs[1:], relative_vanishing=1e-2).axes[0]
    band = next(p for p in ax.patches if p.get_label().startswith("relative vanishing band"))
    assert _span_y(ax, band)[1] == pytest.approx(1e-2 * 0.4)
    assert not [p for p in ax.patches if "exploding" in p.get_label()]
    # head: layers after it are not compared
    ax = plot_flow(recs[1:], thresholds=th, head="l5").axes[0]
    band = next(p for p in ax.patches if p.get_label().startswith("relative vanishing band"))
    assert _span_y(ax, band)[1] == pytest.approx(1e-3 * 0.15)


def test_flow_flagged_layers_of_a_real_run_sit_in_the_relative_band():
    """A deep sigmoid MLP that gradwatch flags vanishing: at the drawn step every flagged layer
    is inside the shaded band and every layer the verdict left alone is above it."""
    import torch

    from gradwatch import GradWatch, Thresholds
    from gradwatch.bench.nets import DeepMLP

    torch.manual_seed(0)
    model = DeepMLP(10, width=32, activation="sigmoid")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.rand(64, 784), torch.randint(0, 10, (64,))
    with GradWatch(model, optimizer=opt) as watch:
        for _ in range(8):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        records, head = list(watch.history), watch.head
    last = records[-1]
    assert last.flagged and last.flagged[0] == "input"  # the run really vanishes
    ax = plot_flow(records, steps=last.step, thresholds=Thresholds(), head=head).axes[0]
    band = next(p for p in ax.patches if p.get_label().startswith("relative vanishing band"))
    top = _span_y(ax, band)[1]
    for name, stat in last.layers.items():
        assert (stat.norm < top) == (name in last.flagged), (name, stat.norm, top)


def test_flow_act_norm_plots_output_gradients_without_bands():
    ax = plot_flow(_records(), steps=[2], which="act_norm", vanishing=1e-7).axes[0]
    np.testing.assert_allclose(_line(ax, "step 2").get_ydata(),
                               [NAN] + [10 * v for v in NORMS[2][1:]])  # act_norm None -> gap
    assert len(ax.patches) == 0
    assert "output" in ax.get_ylabel()


def test_flow_draws_into_given_axes_and_saves_png(tmp_path):
    fig = Figure()
    ax = fig.add_subplot()
    out = plot_flow(_records(), ax=ax, path=tmp_path / "sub" / "flow.png")
    assert out is fig and ax.get_lines()
    assert (tmp_path / "sub" / "flow.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_flow_many_layers_keeps_tick_labels_readable():
    names = [f"encoder.layer.{i}.attention.output.dense" for i in range(150)]
    rec = StepRecord(step=0, total_norm=1.0,
                     layers={n: LayerStat(norm=10.0 ** (-i / 20)) for i, n in enumerate(names)})
    ax = plot_flow([rec]).axes[0]
    ticks = ax.xaxis.get_major_locator()()
    assert 10 <= len(ticks) <= 40 and ticks[0] == 0 and ticks[-1] == 149
    label = ax.xaxis.get_major_formatter()(149, 0)
    assert label.startswith("149: ") and label.endswith("attention.output.dense")
    assert len(label) <= 40


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=[1]), "recorded steps"),
    (dict(which="grad"), "which"),
    (dict(vanishing=1.0, exploding=0.5), "vanishing"),
    (dict(vanishing=-1.0), "vanishing"),
])
def test_flow_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plot_flow(_records(), **kwargs)


def test_plots_reject_empty_input_and_missing_statistics():
    for fn in (plot_flow, plot_norms, plot_heatmap):
        with pytest.raises(ValueError, match="at least one StepRecord"):
            fn([])
    bare = [StepRecord(step=0, total_norm=1.0)]
    for fn in (plot_flow, plot_heatmap):
        with pytest.raises(ValueError, match="per-layer"):
            fn(bare)
    no_act = [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=1.0)})]
    with pytest.raises(ValueError, match="activations=False"):
        plot_flow(no_act, which="act_norm")
    with pytest.raises(TypeError, match="StepRecord"):
        plot_flow([{"step": 0}])


# ----------------------------------------------------------------------------------- plot_norms
def test_norms_total_layers_and_clipping_equal_records():
    recs = _records()
    ax = plot_norms(recs).axes[0]
    steps = [0, 2, 4, 6]
    total = _line(ax, "total (all layers)")
    np.testing.assert_array_equal(total.get_xdata(), steps)
    np.testing.assert_allclose(total.get_ydata(), [r.total_norm for r in recs])  # step 4: NaN
    assert total.get_linewidth() > 2 * _line(ax, "head").get_linewidth()
    np.testing.assert_allclose(_line(ax, "blocks.0.fc").get_ydata(),
                               [1e-3, 2e-3, NAN, 4e-3])
    after = _line(ax, "total after clipping")
    np.testing.assert_allclose(after.get_ydata(), [r.total_norm * r.clip_coef for r in recs])
    clipped = [r.step for r in recs if r.clipped]
    assert clipped == [4, 6]  # NaN total (coef 0) and 5e4 total
    strip = _collection(ax, f"clipped ({len(clipped)} of 4 steps)")
    # consecutive clipped records merge into one bar, half a record gap either side
    spans = [(p.vertices[:, 0].min(), p.vertices[:, 0].max()) for p in strip.get_paths()]
    assert spans == [(3.0, 7.0)]
    assert not [c for c in ax.collections if c.get_label().startswith("clipped") and c is not strip]
    assert _edge_x(ax, "non-finite (drawn at top)") == [4]
    assert _edge_x(ax, "zero norm (drawn at bottom)") == [6]


def test_norms_marks_nonfinite_skipped_and_spike_steps():
    ax = plot_norms(_records()).axes[0]
    events = {c.get_label(): c for c in ax.collections if isinstance(c, LineCollection)}
    assert set(events) == {"non-finite gradients (1 step)", "step skipped (1 step)"}
    for c in events.values():
        assert [seg[0][0] for seg in c.get_segments()] == [4]
    np.testing.assert_allclose(_collection(ax, "spike in total norm").get_offsets(),
                               [[6, _records()[-1].total_norm]])
    assert _edge_x(ax, "layer spike") == [6]


def test_norms_amp_overflow_is_told_apart_from_model_nans():
    recs = [StepRecord(step=s, total_norm=INF if s == 1 else 1.0, amp_overflow=s == 1,
                       layers={"a": LayerStat(norm=INF if s == 1 else 1.0)}) for s in range(3)]
    labels = [c.get_label() for c in plot_norms(recs).axes[0].collections]
    assert "AMP overflow (1 step)" in labels
    assert not any(label.startswith("non-finite gradients") for label in labels)


def test_norms_layer_selection():
    names = [f"l{i}" for i in range(20)]
    recs = [StepRecord(step=s, total_norm=1.0, layers={n: LayerStat(norm=1.0) for n in names})
            for s in range(3)]
    ax = plot_norms(recs, max_layers=4).axes[0]
    drawn = [ln.get_label() for ln in ax.get_lines() if ln.get_label().startswith("l")]
    assert drawn[0] == "l0" and drawn[-1] == "l19" and len(drawn) == 4
    assert "4 of 20 layers" in ax.get_title()
    ax = plot_norms(recs, layers=["l3", "l7"]).axes[0]
    assert [ln.get_label() for ln in ax.get_lines()] == ["l3", "l7", "total (all layers)"]
    with pytest.raises(ValueError, match="unknown names"):
        plot_norms(recs, layers=["nope"])
    assert plot_norms([StepRecord(step=0, total_norm=0.5)]).axes[0].get_lines()  # total only


# --------------------------------------------------------------------------------- plot_heatmap
def test_heatmap_cells_are_log10_norms_with_special_cells():
    recs = _records()
    fig = plot_heatmap(recs, vanishing=1e-7, exploding=1e4)
    ax = fig.axes[0]
    image = next(a for a in ax.get_children() if isinstance(a, AxesImage))
    data = image.get_array()
    assert data.shape == (4, 4)  # layers x steps
    vmin, vmax = image.norm.vmin, image.norm.vmax
    finite = np.array([[v if math.isfinite(v) and v > 0 else NAN for v in NORMS[s]]
                       for s in NORMS]).T
    ok = np.isfinite(finite)
    np.testing.assert_allclose(np.asarray(data)[ok], np.log10(finite[ok]))
    assert vmin == pytest.approx(math.log10(1e-8)) and vmax == pytest.approx(math.log10(5e4))
    assert (np.asarray(data)[:3, 2] > vmax).all()  # non-finite -> "over" colour (red)
    assert np.asarray(data)[0, 3] < vmin  # zero -> "under" colour
    bar = fig.axes[1]  # the colour bar: log10 values, labelled as the norms they stand for
    assert "log colour scale" in bar.get_ylabel()
    ticks = [t for t in bar.yaxis.get_major_locator()() if vmin <= t <= vmax]
    assert ticks == list(range(-8, 5, 2))
    assert bar.yaxis.get_major_formatter().format_ticks(ticks)[:2] == ["$10^{-8}$", "$10^{-6}$"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["non-finite (3 cells)", "zero norm (1 cell)",
                      "absolute bounds on colour bar: vanishing 1e-07, exploding 10000"]
    assert [t.get_text() for t in ax.get_yticklabels()] == NAMES
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "2", "4", "6"]  # step numbers


def test_heatmap_missing_layers_are_masked(tmp_path):
    recs = [StepRecord(step=0, total_norm=1.0, layers={"a": LayerStat(norm=1.0)}),
            StepRecord(step=1, total_norm=1.0, layers={"a": LayerStat(norm=2.0),
                                                       "b": LayerStat(norm=3.0)})]
    fig = plot_heatmap(recs, path=tmp_path / "h.png")
    data = next(a for a in fig.axes[0].get_children() if isinstance(a, AxesImage)).get_array()
    assert bool(data.mask[1, 0]) and not data.mask[1, 1]
    assert (tmp_path / "h.png").stat().st_size > 0


def test_importing_gradwatch_and_its_plot_module_does_not_import_matplotlib():
    code = ("import sys, gradwatch, gradwatch.plot, gradwatch.io.report; "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0



# ------------------------------------------------------------------ statuses, ticks, histograms
class _NewStatus(str, Enum):
    """A status gradwatch.record.records.Status does not declare (yet): plots must not crash on it."""

    DEAD = "dead_units"


def _status_records() -> list[StepRecord]:
    statuses = [*Status, _NewStatus.DEAD]
    layers = {f"l{i}": LayerStat(norm=10.0 ** -i if st is not Status.NONFINITE else NAN,
                                 status=st) for i, st in enumerate(statuses)}
    return [StepRecord(step=s, total_norm=1.0, layers=layers) for s in range(3)]


@pytest.mark.parametrize("plot", [plot_flow, plot_norms, plot_heatmap])
def test_every_status_including_an_unknown_one_draws(plot, tmp_path):
    fig = plot(_status_records(), path=tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000 and fig.axes


def test_flow_styles_known_statuses_from_the_table_and_unknown_ones_neutral():
    from matplotlib.colors import to_rgba

    from gradwatch.plot._common import NEUTRAL_STYLE, STATUS_MARKERS, status_style

    ax = plot_flow(_status_records(), steps=0).axes[0]
    styles = {st: status_style(st) for st in (Status.VANISHING, Status.EXPLODING)}
    for st, style in styles.items():
        dots = _collection(ax, f"flagged {style.label}")
        assert tuple(dots.get_facecolor()[0]) == to_rgba(style.color)
    assert styles[Status.VANISHING].color != styles[Status.EXPLODING].color
    new = _collection(ax, "flagged dead_units")
    assert tuple(new.get_facecolor()[0]) == to_rgba(NEUTRAL_STYLE.color)
    k = len(Status)  # the fake status comes after every declared one, with norm 10**-k
    np.testing.assert_allclose(new.get_offsets(), [[k, 10.0 ** -k]])
    odd = status_style("no such status")
    assert (odd.color, odd.marker) == (NEUTRAL_STYLE.color, NEUTRAL_STYLE.marker)
    assert {STATUS_MARKERS[s] for s in ("vanishing", "exploding", "nonfinite")} == {"v", "^", "X"}


def test_log_ticks_are_readable_for_narrow_and_wide_ranges():
    from matplotlib.figure import Figure as Fig

    from gradwatch.plot.ticks import log_ticks

    def labels(lo, hi):
        ax = Fig().add_subplot()
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        log_ticks(ax.yaxis)
        ticks = [t for t in ax.yaxis.get_major_locator()() if lo <= t <= hi]
        return ax.yaxis.get_major_formatter().format_ticks(ticks)

    assert labels(0.45, 0.85) == ["0.5", "0.6", "0.7", "0.8"]  # XOR plateau: no 5×10^-1
    assert labels(0.3, 12) == ["0.5", "1", "2", "5", "10"]
    assert labels(2e-3, 5e3) == ["0.01", "0.1", "1", "10", "100", "1000"]
    wide = labels(1e-14, 1.0)  # one style on the whole axis: 10^0, not "1" beside 10^-14
    assert 4 <= len(wide) <= 9 and wide[0].startswith("$10^{-1") and wide[-1] == "$10^{0}$"
    assert all(w.startswith("$") for w in labels(1e-5, 1.0))  # never 0.001 beside 10^-4


def test_norms_band_is_median_and_range_over_all_layers_and_draws_the_clip_level():
    rng = np.random.default_rng(1)
    names = [f"l{i}" for i in range(9)]
    table = 10.0 ** rng.normal(0, 1, (5, 9))
    table[2, 4] = NAN  # one non-finite layer: left out of that step's median and range
    recs = [StepRecord(step=s, total_norm=3.0, clip_coef=1 / 3, layers={
        n: LayerStat(norm=float(v)) for n, v in zip(names, row)}) for s, row in enumerate(table)]
    ax = plot_norms(recs, band=True, layers=["l0"], clip_level=1.0).axes[0]
    finite = np.where(np.isfinite(table), table, np.nan)
    # the labels say a NaN layer was left out (and its step is marked at the top)
    np.testing.assert_allclose(_line(ax, "median of 9 layers (NaN left out)").get_ydata(),
                               np.nanmedian(finite, axis=1))
    spread = _collection(ax, "min–max of 9 layers (NaN left out)").get_paths()[0].vertices[:, 1]
    assert spread.min() == pytest.approx(np.nanmin(finite)) and spread.max() == pytest.approx(
        np.nanmax(finite))
    assert [ln.get_label() for ln in ax.get_lines()][:2] == [
        "median of 9 layers (NaN left out)", "l0"]
    assert _edge_x(ax, "a layer's norm non-finite (drawn at top)") == [2.0]
    assert list(_line(ax, "clip level (max norm 1)").get_ydata()) == [1.0, 1.0]
    assert "all 9 layers: median and range" in ax.get_title()


@pytest.mark.parametrize("clip, level", [
    (1.0, 1.0), (2, 2.0), ("GlobalNorm(max_norm=0.25)", 0.25), ("auto", None), (None, None),
    (True, None), ("PerTensorNorm(max_norm=1.0)", None), ("GlobalNorm(max_norm=x)", None),
    (0.0, None), (math.inf, None)])
def test_global_clip_level_reads_a_number_a_policy_or_a_header_repr(clip, level):
    from gradwatch.plot import global_clip_level

    assert global_clip_level(clip) == level


def test_global_clip_level_of_policies():
    from gradwatch.clip import GlobalNorm, PerTensorNorm
    from gradwatch.plot import global_clip_level

    assert global_clip_level(GlobalNorm(0.5)) == 0.5
    assert global_clip_level(repr(GlobalNorm(0.5))) == 0.5  # as a log header stores it
    assert global_clip_level(PerTensorNorm(0.5)) is None


def test_norms_says_a_subset_is_shown_even_under_a_custom_title():
    names = [f"l{i}" for i in range(20)]
    recs = [StepRecord(step=s, total_norm=1.0, layers={n: LayerStat(norm=1.0) for n in names})
            for s in range(3)]
    ax = plot_norms(recs, max_layers=4, title="Deep MLP").axes[0]
    assert ax.get_title() == "Deep MLP"
    assert "4 of 20 shown" in ax.get_legend().get_title().get_text()
    ax = plot_norms(recs, layers=names, title="Deep MLP").axes[0]
    assert "shown" not in ax.get_legend().get_title().get_text()


def test_histograms_draw_fractions_per_bin_for_each_layer_and_epoch(tmp_path):
    from gradwatch.plot import Histogram, plot_histograms

    rng = np.random.default_rng(0)
    hists = {f"layer{i}": {e: rng.normal(0, 0.1 * (1 + e * i), 500) for e in range(3)}
             for i in range(8)}
    hists["layer0"][1] = {"counts": [1, 3], "edges": [-1.0, 0.0, 1.0]}  # results.json form
    fig = plot_histograms(hists, max_layers=4, path=tmp_path / "h.png")
    panels = [ax for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["0: layer0", "2: layer2", "5: layer5",
                                                "7: layer7"]
    stairs = panels[0].patches
    assert len(stairs) == 3  # one per epoch
    np.testing.assert_allclose(stairs[1].get_data().values, [0.25, 0.75])
    ref, edges = np.histogram(hists["layer7"][2], bins=40)
    np.testing.assert_allclose(panels[3].patches[2].get_data().values, ref / ref.sum())
    np.testing.assert_allclose(panels[3].patches[2].get_data().edges, edges)
    assert "4 of 8 layers shown" in fig.get_suptitle()
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["epoch 0", "epoch 1", "epoch 2"]
    assert len(fig.axes) == 6  # 2 rows x 3 panels (2 hidden), no colour bar for three epochs
    titled = plot_histograms(hists, max_layers=4, title="Run A")
    assert titled.get_suptitle().startswith("Run A\n4 of 8 layers shown")  # a custom title too
    many = {f"layer{i}": {e: rng.normal(0, 1, 50) for e in range(12)} for i in range(2)}
    fig = plot_histograms(many)
    assert not fig.legends and fig.axes[-1].get_ylabel() == "epoch"  # 12 epochs: a colour bar
    assert "all 2 layers shown" in fig.get_suptitle()
    assert (tmp_path / "h.png").stat().st_size > 1000
    h = Histogram.of([1.0, 1.0, float("nan")], bins=2)
    assert sum(h.counts) == 2 and Histogram.coerce(h.to_dict()) == h
    with pytest.raises(ValueError, match="one more entry"):
        Histogram((1.0,), (0.0,))
    with pytest.raises(ValueError, match="at least one layer"):
        plot_histograms({})
    with pytest.raises(ValueError, match="among"):
        plot_histograms(hists, layers=["nope"])


def test_flow_marks_the_first_birth_not_a_later_consequence():
    """A NaN born at `blocks.1.fc` at step 4, then (weights gone NaN) first seen at the input
    layer on later steps: the line names the first birth even when only a later step is drawn."""
    recs = _records()
    later = [StepRecord(r.step + 10, r.total_norm, 1.0, r.layers,
                        first_nonfinite=NAMES[0] if r.first_nonfinite else None,
                        nonfinite_origin="forward" if r.first_nonfinite else None)
             for r in recs]
    ax = plot_flow(recs + later, steps=[max(r.step for r in later)]).axes[0]
    born = [ln for ln in ax.get_lines() if ln.get_label().startswith("NaN/Inf born here")]
    assert len(born) == 1 and list(born[0].get_xdata()) == [2, 2]
    assert "blocks.1.fc" in born[0].get_label() and "step 4" in born[0].get_label()
