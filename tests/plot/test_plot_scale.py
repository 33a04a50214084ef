"""The figures at the scale of real runs: every flagged cell or layer the legend counts is drawn,
whatever the run's length or depth (a heat map of 5,000 steps, a flow plot of 400 layers)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import same_color, to_rgb  # noqa: E402
from matplotlib.image import AxesImage, imread  # noqa: E402

from gradwatch.plot import plot_flow, plot_heatmap, plot_norms  # noqa: E402
from gradwatch.plot._common import status_style  # noqa: E402
from gradwatch.record.records import LayerStat, Status, StepRecord  # noqa: E402

NAN_AT, ZERO_AT = (2500, 7), (3700, 5)  # (step, layer) of the one NaN and the one zero cell


def _long_run(steps: int = 5000, layers: int = 20) -> list[StepRecord]:
    """``steps`` records of ``layers`` layers, layer k at norm 10^(-k/5); one NaN, one zero."""
    base = {f"l{k}": LayerStat(norm=10.0 ** (-k / 5)) for k in range(layers)}
    out = []
    for s in range(steps):
        stats = base
        if s in (NAN_AT[0], ZERO_AT[0]):
            stats = dict(base)
            if s == NAN_AT[0]:
                stats[f"l{NAN_AT[1]}"] = LayerStat(norm=math.nan, status=Status.NONFINITE)
            if s == ZERO_AT[0]:
                stats[f"l{ZERO_AT[1]}"] = LayerStat(norm=0.0, status=Status.DEAD)
        out.append(StepRecord(step=s, total_norm=1.0, layers=stats))
    return out


def _in_axes(image: np.ndarray, ax, rgb) -> tuple[np.ndarray, np.ndarray]:
    """(x, y) display coordinates of the pixels of exactly colour ``rgb`` inside ``ax``."""
    want = np.round(np.array(to_rgb(rgb)) * 255).astype(int)
    rows, cols = np.nonzero((image[..., :3].astype(int) == want).all(axis=-1))
    x, y = cols + 0.5, image.shape[0] - rows - 0.5  # display y grows upwards
    box = ax.bbox
    inside = (x >= box.x0) & (x <= box.x1) & (y >= box.y0) & (y <= box.y1)
    return x[inside], y[inside]


def _draw(fig, dpi: float) -> np.ndarray:
    fig.set_dpi(dpi)
    FigureCanvasAgg(fig)  # a pyplot-free figure has no drawing canvas of its own
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba())


# --------------------------------------------------------------------------------- plot_heatmap
@pytest.mark.parametrize("dpi", [72, 100, 150])
def test_heatmap_of_a_long_run_draws_its_one_nan_and_one_zero_cell_where_they_are(dpi):
    fig = plot_heatmap(_long_run())
    ax = fig.axes[0]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["non-finite (1 cell)", "zero norm (1 cell)"]
    image = _draw(fig, dpi)
    zero_colour = ax.images[0].cmap.get_under()
    for (step, layer), colour in ((NAN_AT, "red"), (ZERO_AT, zero_colour)):
        x, y = _in_axes(image, ax, colour)
        assert x.size, f"no {colour} pixel inside the axes at {dpi} dpi"
        data_x, data_y = ax.transData.inverted().transform(np.c_[x, y]).T
        per_px = 5000 / ax.bbox.width  # steps per pixel
        assert np.abs(data_x - step).max() <= 3 * per_px + 1  # its column, within a bin
        assert np.abs(data_y - layer).max() <= 0.5 + 1e-6  # its row (layers fit: not merged)
    assert "recorded steps per column" in ax.get_xlabel()  # the label says columns are merged


def test_heatmap_saved_png_shows_the_nan_cell_inside_the_axes(tmp_path):
    fig = plot_heatmap(_long_run(), path=tmp_path / "h.png")
    saved = (imread(tmp_path / "h.png") * 255).round().astype(np.uint8)
    fig.set_dpi(110)  # finish() saves at 110 dpi: the axes box at that resolution
    _draw(fig, 110)
    x, _ = _in_axes(saved, fig.axes[0], "red")
    assert x.size


def test_heatmap_column_is_the_largest_norm_of_its_steps_unless_one_is_flagged():
    n = 3000
    norms = [10.0 ** -(s % 7) for s in range(n)]
    norms[1234] = 0.0
    recs = [StepRecord(step=s, total_norm=1.0, layers={"a": LayerStat(norm=v),
                                                      "b": LayerStat(norm=0.5)})
            for s, v in enumerate(norms)]
    fig = plot_heatmap(recs)
    _draw(fig, 100)
    image = next(a for a in fig.axes[0].get_children() if isinstance(a, AxesImage))
    drawn = np.asarray(image.get_array())
    m = drawn.shape[1]
    assert m < n  # merged: fewer columns than steps
    of_bin = np.arange(n) * m // n  # step s falls into column s * m // n
    expected = np.full(m, -np.inf)
    np.fmax.at(expected, of_bin, np.log10(np.where(np.array(norms) > 0, norms, np.nan)))
    flagged = of_bin[1234]
    keep = np.arange(m) != flagged
    np.testing.assert_allclose(drawn[0, keep], expected[keep])
    assert drawn[0, flagged] < image.norm.vmin  # the zero wins: drawn in the under colour
    np.testing.assert_allclose(drawn[1], math.log10(0.5))


def test_heatmap_zero_cells_have_a_visible_colour_named_in_the_legend():
    recs = [StepRecord(step=s, total_norm=1.0,
                       layers={"a": LayerStat(norm=0.0 if s == 1 else 0.1),
                               "b": LayerStat(norm=1.0)}) for s in range(3)]
    fig = plot_heatmap(recs)
    ax = fig.axes[0]
    under = ax.images[0].cmap.get_under()
    assert not same_color(under, "white") and not same_color(under, "red")
    patch = next(h for h, t in zip(ax.get_legend().legend_handles, ax.get_legend().get_texts())
                 if t.get_text() == "zero norm (1 cell)")
    assert same_color(patch.get_facecolor(), under)
    x, _ = _in_axes(_draw(fig, 100), ax, under)
    assert x.size


# ------------------------------------------------------------------------------------ plot_flow
def _flag_offsets(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return found[0]


def test_flow_marks_flagged_zero_and_nan_layers_on_the_edges_and_says_so():
    layers = {f"l{k}": LayerStat(norm=0.0, status=Status.DEAD) for k in range(5)}
    layers.update({f"l{k}": LayerStat(norm=10.0 ** (k - 10)) for k in range(5, 10)})
    layers["l10"] = LayerStat(norm=math.nan, status=Status.NONFINITE)
    ax = plot_flow([StepRecord(step=0, total_norm=1.0, layers=layers)]).axes[0]
    dead, bad = status_style(Status.DEAD).label, status_style(Status.NONFINITE).label
    bottom = _flag_offsets(ax, f"flagged {dead} (zero norm, on the bottom edge)")
    top = _flag_offsets(ax, f"flagged {bad} (NaN/Inf norm, on the top edge)")
    np.testing.assert_allclose(bottom.get_offsets(), [[k, 0.0] for k in range(5)])
    np.testing.assert_allclose(top.get_offsets(), [[10, 1.0]])
    for dots in (bottom, top):  # y in axes fraction: on the edge, never read as a value
        assert dots.get_offset_transform() == ax.get_xaxis_transform() and not dots.get_clip_on()
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert bottom.get_label() in legend and top.get_label() in legend


def test_flow_of_400_layers_marks_every_flagged_zero_layer():
    names = [f"blocks.{k}" for k in range(400)]
    layers = {n: LayerStat(norm=0.0, status=Status.DEAD) if k < 235 else
              LayerStat(norm=10.0 ** (-44 + (k - 235) / 4)) for k, n in enumerate(names)}
    rec = StepRecord(step=0, total_norm=1.0, layers=layers)
    ax = plot_flow([rec], relative_vanishing=1e-3, relative_exploding=1e3).axes[0]
    dead = status_style(Status.DEAD).label
    dots = _flag_offsets(ax, f"flagged {dead} (zero norm, on the bottom edge)")
    marked = {int(x) for x in dots.get_offsets()[:, 0]}
    assert marked == set(range(235))


def test_flow_relative_bands_are_told_apart_by_their_hatch():
    names = [f"l{k}" for k in range(9)]
    rec = StepRecord(step=0, total_norm=1.0,
                     layers={n: LayerStat(norm=10.0 ** (k - 8)) for k, n in enumerate(names)})
    ax = plot_flow([rec], relative_vanishing=1e-3, relative_exploding=1e1).axes[0]
    bands = {p.get_label().split(" band")[0]: p for p in ax.patches
             if p.get_label().startswith("relative")}
    assert set(bands) == {"relative vanishing", "relative exploding"}
    hatches = {name: p.get_hatch() for name, p in bands.items()}
    assert all(hatches.values()) and len(set(hatches.values())) == 2, hatches


# ----------------------------------------------------------------------------------- plot_norms
def test_norms_layer_lines_are_drawn_over_the_total():
    recs = [StepRecord(step=s, total_norm=2.0, layers={"body": LayerStat(norm=1e-3),
                                                       "head": LayerStat(norm=2.0)})
            for s in range(5)]
    ax = plot_norms(recs).axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert lines["head"].get_zorder() > lines["total (all layers)"].get_zorder()


def test_heatmap_cells_are_built_in_matrices_of_the_map_not_per_record_arrays():
    """`_cells` gives what the per-record arrays gave (log norms, non-finite, zero, not
    recorded) and peaks at a few matrices of the map's size: a 400-layer x 100k-step map is
    320 MB a matrix, so per-record arrays beside the stacked ones cost gigabytes."""
    import math
    import tracemalloc

    from gradwatch.plot._common import split, value
    from gradwatch.plot.heatmap import _cells
    from gradwatch.record.records import LayerStat, StepRecord

    names = [f"l{k}" for k in range(40)]
    rng = np.random.default_rng(0)
    recs = []
    for step in range(1500):
        norms = rng.lognormal(size=len(names)).tolist()
        norms[step % 40] = 0.0 if step % 7 == 0 else norms[step % 40]
        norms[(step * 3) % 40] = math.nan if step % 11 == 0 else norms[(step * 3) % 40]
        layers = {n: LayerStat(v, None) for n, v in zip(names, norms) if not (step % 13 == 0
                                                                           and n == "l5")}
        recs.append(StepRecord(step, 1.0, 1.0, layers))
    per_step = [split([value(r, n, "norm") for n in names]) for r in recs]
    y = np.stack([c[0] for c in per_step], axis=1)
    nonfinite = np.stack([c[1] for c in per_step], axis=1)
    zero = np.stack([c[2] for c in per_step], axis=1)
    with np.errstate(divide="ignore"):
        want = (np.log10(y), nonfinite, zero, np.isnan(y) & ~nonfinite & ~zero)
    got = _cells(recs, names, "norm")
    assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(got, want))
    assert got[1].any() and got[2].any() and got[3].any()
    tracemalloc.start()
    _cells(recs, names, "norm")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 16 * len(names) * len(recs)  # bytes per cell: a float64 and a few masks
