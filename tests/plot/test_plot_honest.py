"""The figures draw what the records hold: zero and NaN layers in the band, lone points, one run."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from gradwatch.plot import plot_flow, plot_heatmap, plot_loss, plot_norms  # noqa: E402
from gradwatch.record.records import LayerStat, StepRecord  # noqa: E402

NAN = math.nan


def _recs(rows, totals=None, losses=None, steps=None):
    names = [f"l{i}" for i in range(len(rows[0]))]
    steps = steps if steps is not None else range(len(rows))
    return [StepRecord(step=s, total_norm=1.0 if totals is None else totals[k],
                       loss=None if losses is None else losses[k],
                       layers={n: LayerStat(norm=v) for n, v in zip(names, row)})
            for k, (s, row) in enumerate(zip(steps, rows))]


def _line(ax, label):
    found = [ln for ln in ax.get_lines() if ln.get_label() == label]
    assert len(found) == 1, [ln.get_label() for ln in ax.get_lines()]
    return found[0]


def _markers(ax, color):
    """(x, y) of the lone-point markers drawn in ``color``."""
    pts = [(x, y) for ln in ax.get_lines() if ln.get_linestyle() == "None"
           and matplotlib.colors.same_color(ln.get_color(), color)
           for x, y in zip(ln.get_xdata(), ln.get_ydata())]
    return sorted((float(x), float(y)) for x, y in pts)


def _edge_x(ax, label):
    found = [c for c in ax.collections if c.get_label() == label]
    assert len(found) == 1, [c.get_label() for c in ax.collections]
    return sorted(found[0].get_offsets()[:, 0].tolist())


# --------------------------------------------------------------------------- band over layers
def test_band_median_and_range_count_zero_norms_and_mark_them():
    rows = [[0.0, 0.3, 0.9]] * 4
    ax = plot_norms(_recs(rows), band=True).axes[0]
    np.testing.assert_allclose(_line(ax, "median of 3 layers").get_ydata(),
                               np.median(np.array(rows), axis=1))  # 0.3, not 0.6
    band = next(c for c in ax.collections if c.get_label() == "min–max of 3 layers")
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(0.9) and ys.min() < ax.get_ylim()[0]  # down to the edge
    assert _edge_x(ax, "a layer's norm zero (drawn at bottom)") == [0.0, 1.0, 2.0, 3.0]


def test_band_marks_steps_where_a_layer_is_nan_and_says_it_was_left_out():
    rows = [[0.1, 0.3, 0.9], [0.1, NAN, 0.9], [0.1, 0.3, 0.9]]
    ax = plot_norms(_recs(rows), band=True).axes[0]
    median = _line(ax, "median of 3 layers (NaN left out)").get_ydata()
    np.testing.assert_allclose(median, [0.3, np.median([0.1, 0.9]), 0.3])
    assert _edge_x(ax, "a layer's norm non-finite (drawn at top)") == [1.0]


def test_band_of_one_record_is_drawn_as_a_bar_and_a_point():
    ax = plot_norms(_recs([[0.1, 0.2, 0.4]]), band=True).axes[0]
    assert _markers(ax, "tab:blue") == [(0.0, pytest.approx(0.2))]
    bars = [c for c in ax.collections if c.get_label().startswith("_")]
    assert any(np.allclose(seg[:, 1], [0.1, 0.4]) for c in bars for seg in c.get_segments())


# --------------------------------------------------------------------- lone points get markers
def test_one_record_draws_markers_for_layers_and_total():
    ax = plot_norms(_recs([[0.5, 0.25]], totals=[0.7])).axes[0]
    assert _markers(ax, "black") == [(0.0, pytest.approx(0.7))]
    colors = {ln.get_label(): ln.get_color() for ln in ax.get_lines() if ln.get_label() in
              ("l0", "l1")}
    assert _markers(ax, colors["l0"]) == [(0.0, 0.5)]
    assert _markers(ax, colors["l1"]) == [(0.0, 0.25)]


def test_finite_points_between_nan_steps_are_marked():
    rows = [[0.5 if s % 2 == 0 else NAN] for s in range(8)]
    totals = [1.0 if s % 2 == 0 else NAN for s in range(8)]
    ax = plot_norms(_recs(rows, totals=totals)).axes[0]
    assert _markers(ax, "black") == [(float(s), 1.0) for s in (0, 2, 4, 6)]


def test_joined_points_get_no_extra_markers():
    ax = plot_norms(_recs([[0.5]] * 3)).axes[0]
    assert _markers(ax, "black") == []


def test_loss_of_one_record_and_between_nan_steps_is_marked():
    ax = plot_loss(_recs([[0.5]], losses=[2.0])).axes[0]
    assert _markers(ax, "tab:blue") == [(0.0, 2.0)]
    losses = [float(s) if s % 2 == 0 else NAN for s in range(6)]
    ax = plot_loss(_recs([[0.5]] * 6, losses=losses)).axes[0]
    assert _markers(ax, "tab:blue") == [(0.0, 0.0), (2.0, 2.0), (4.0, 4.0)]


def test_flow_of_many_layers_marks_a_lone_finite_layer():
    row = [NAN] * 70
    row[10] = 0.5
    ax = plot_flow(_recs([row]), steps=0).axes[0]
    color = _line(ax, "step 0").get_color()
    assert _markers(ax, color) == [(10.0, 0.5)]


# ----------------------------------------------------------------------- one run per figure
@pytest.mark.parametrize("plot", [plot_norms, plot_flow, plot_heatmap, plot_loss])
def test_plots_refuse_records_of_several_runs(plot):
    recs = _recs([[0.5]] * 4, losses=[1.0] * 4, steps=[0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"record 2 has step 0 after step 1.*run='all'"):
        plot(recs)


# ------------------------------------------------------------------------------ loss
def test_plot_loss_says_the_loss_was_nan_not_missing():
    with pytest.raises(ValueError, match=r"non-finite \(NaN/Inf\) at all 3 recorded step"):
        plot_loss(_recs([[0.5]] * 3, losses=[NAN] * 3))
    with pytest.raises(ValueError, match="none carries one; pass the loss"):
        plot_loss(_recs([[0.5]] * 3))


# ------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize("kwargs, error, match", [
    (dict(layers="l0"), TypeError, r"list of layer names, but got the string 'l0'; pass \['l0'\]"),
    (dict(max_layers=2.5), TypeError, "`max_layers` to be a whole number"),
    (dict(max_layers="3"), TypeError, "`max_layers` to be a whole number"),
    (dict(max_layers=-1), ValueError, "`max_layers` to be a whole number >= 0"),
    (dict(clip_level="1"), TypeError, "`clip_level` to be a number"),
    (dict(clip_level=-1), ValueError, "`clip_level` to be a max norm >= 0"),
])
def test_plot_norms_names_a_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_norms(_recs([[0.5, 0.2]] * 2), **kwargs)


def test_plot_norms_takes_numpy_counts():
    ax = plot_norms(_recs([[0.5, 0.2]] * 2), max_layers=np.int64(1)).axes[0]
    assert "1 of 2 layers shown" in ax.get_title()


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(relative_vanishing=-1), ValueError, "`relative_vanishing` to be a factor > 0"),
    (dict(relative_exploding="x"), TypeError, "`relative_exploding` to be a number"),
    (dict(roles=["weight"]), TypeError, "`roles` to map layer name -> role"),
    (dict(head="nope"), ValueError, "`head` among the recorded layers"),
    (dict(steps="0"), TypeError, "`steps` to be a step number"),
])
def test_plot_flow_names_a_bad_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        plot_flow(_recs([[0.5, 0.2, 0.1]] * 2), **kwargs)


def test_plot_flow_takes_numpy_steps():
    ax = plot_flow(_recs([[0.5, 0.2, 0.1]] * 4), steps=np.int64(3)).axes[0]
    np.testing.assert_allclose(_line(ax, "step 3").get_ydata(), [0.5, 0.2, 0.1])
    ax = plot_flow(_recs([[0.5, 0.2, 0.1]] * 4), steps=np.array([1, 2])).axes[0]
    assert {ln.get_label() for ln in ax.get_lines()} >= {"step 1", "step 2"}


def test_a_directory_as_path_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"`path` to be a PNG file name, but .* is a directory"):
        plot_norms(_recs([[0.5]]), path=tmp_path)
    assert not tmp_path.with_suffix(".png").exists()


# ------------------------------------------------------------------------------ colour bar
@pytest.mark.parametrize("lo, hi, ticks", [
    (-1.6, -0.4, [0.05, 0.1, 0.2]),  # under two decades: 1-2-5 steps, no 0.0251189
    (-4.2, -1.5, [1e-4, 1e-3, 1e-2]),  # whole decades
    (-1.2, -0.9, [0.07, 0.08, 0.09, 0.1]),
])
def test_colour_bar_ticks_are_decades_or_round_numbers(lo, hi, ticks):
    from gradwatch.plot.ticks import log10_positions

    np.testing.assert_allclose(10.0 ** np.array(log10_positions(lo, hi)), ticks)


def test_heatmap_colour_bar_labels_are_round(tmp_path):
    rows = [[0.03, 0.05, 0.3]] * 3
    fig = plot_heatmap(_recs(rows))
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
    assert labels == ["0.05", "0.1", "0.2"]


# ------------------------------------------------------------------------------ histograms
def test_histogram_pair_may_be_a_list_and_a_dict_names_its_missing_key():
    from gradwatch.plot import Histogram, plot_histograms

    assert Histogram.coerce([[1, 2], [0, 1, 2]]) == Histogram((1.0, 2.0), (0.0, 1.0, 2.0))
    fig = plot_histograms({"a": {0: [[1, 2], [0, 1, 2]]}})
    np.testing.assert_allclose(fig.axes[0].patches[0].get_data()[0], [1 / 3, 2 / 3])
    with pytest.raises(ValueError, match="keys 'counts' and 'edges', but it has no 'edges'"):
        plot_histograms({"a": {0: {"counts": [1]}}})
