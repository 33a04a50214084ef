"""A long log of a deep model: read, summarised and reported as a line-by-line reading of the
raw JSON gives it (records, numbers, text), in memory that grows with columns, not objects."""

from __future__ import annotations

import copy
import json
import math
import tracemalloc
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger, StepRecord
from gradwatch.io.cli import main
from gradwatch.io.loggers import read_jsonl, read_runs
from gradwatch.io.report import layer_table, markdown_report
from gradwatch.io.runlog import scan_log
from gradwatch.io.runsummary import fmt, summarize
from gradwatch.io.summary import of_finite


def _watched_log(path, steps=24):
    """A real log: a 4-layer MLP watched by GradWatch with a JsonlLogger."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    x, y = torch.randn(16, 5), torch.randint(0, 2, (16,))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with GradWatch(model, optimizer=opt, loggers=[JsonlLogger(path)]) as watch:
            for _ in range(steps):
                opt.zero_grad()
                loss = nn.functional.cross_entropy(model(x), y)
                loss.backward()
                watch.note_loss(loss)
                opt.step()
    lines = path.read_text(encoding="utf-8").splitlines()
    return lines[0], [json.loads(line) for line in lines[1:]]


def _scaled(header, real, records, width):
    """JsonlLogger's exact line format, scaled: ``records`` records of ``width`` layers made
    from the real ones (layer k is real layer k % 4, renamed; norms scaled per record), with a
    NaN step, a spike, a flagged layer, a null statistic and a layer without act_norm."""
    lines = [header]
    for step in range(records):
        d = copy.deepcopy(real[step % len(real)])
        d["step"] = step
        base = list(d["layers"].items())
        layers = {}
        for k in range(width):
            name, stat = base[k % len(base)]
            stat = dict(stat, norm=stat["norm"] * (1 + (step * 7 + k) % 13 / 10))
            layers[f"{k}.{name}"] = stat
        d["layers"] = layers
        if step == records // 2:  # a NaN step: born in layer 3, then layer 0 on the next one
            d["total_norm"], d["first_nonfinite"], d["nonfinite_origin"] = math.nan, "3.6", \
                "backward"
            layers["3.6"].update(norm=math.nan, status="nonfinite", reason="gradient norm nan")
        if step == records // 2 + 1:
            d["total_norm"], d["first_nonfinite"], d["nonfinite_origin"] = math.inf, "0.0", \
                "forward"
        if step % 5 == 0:
            layers["1.2"].update(status="vanishing", reason=f"norm {step}x below", spike=True)
            d["spike"] = True
        if step == 3:
            layers["2.4"]["update_ratio"] = None  # a statistic written as null
            del layers["1.2"]["act_norm"]  # a layer without act_norm
        lines.append(json.dumps(d, separators=(",", ":")))
    return lines


@pytest.fixture(scope="module")
def log(tmp_path_factory):
    path = tmp_path_factory.mktemp("scale") / "real.jsonl"
    header, real = _watched_log(path)
    assert any("update_ratio" in s for d in real for s in d["layers"].values())
    lines = _scaled(header, real, records=300, width=40)
    big = path.with_name("big.jsonl")
    big.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return big, json.loads(header)["gradwatch_run"], [json.loads(x) for x in lines[1:]]


def _key(r: StepRecord) -> str:
    """A record as text, NaN included, with its number types (a NaN never equals itself)."""
    types = [type(r.total_norm).__name__] + [
        (type(s.norm).__name__, type(s.status).__name__, [type(v).__name__ for v in
                                                          s.values.values()])
        for s in r.layers.values()]
    return json.dumps([r.to_dict(), types])


def test_the_records_are_those_of_each_line(log):
    path, _header, dicts = log
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run, = read_runs(path)
    assert [_key(r) for r in run.records] == [_key(StepRecord.from_dict(d)) for d in dicts]


def test_the_records_behave_as_the_tuple_they_replace(log):
    path, _header, dicts = log
    records = read_runs(path)[0].records
    healthy = tuple(StepRecord.from_dict(d) for d in dicts[:20])  # no NaN: == is exact
    assert len(records) == len(dicts) and records[:20] == healthy and healthy == records[:20]
    assert records[3] == healthy[3] and records[-1].step == dicts[-1]["step"]
    assert [r.step for r in records[5:50:9]] == [d["step"] for d in dicts[5:50:9]]
    assert [r.step for r in reversed(records)] == [d["step"] for d in reversed(dicts)]
    assert records[:20] != healthy[:19] and read_runs(path)[0].records[:20] == records[:20]
    assert [r.step for r in read_jsonl(path)] == [d["step"] for d in dicts]
    layers = records[7].layers
    assert list(layers) == list(dicts[7]["layers"]) and "0.0" in layers and "nope" not in layers
    assert dict(layers) == dict(StepRecord.from_dict(dicts[7]).layers)
    with pytest.raises(IndexError):
        records[len(dicts)]


def test_the_summary_is_what_numpy_reads_from_the_lines(log):
    path, _header, dicts = log
    s = summarize(read_runs(path)[0].records)
    names = list(dicts[-1]["layers"])
    assert [x.name for x in s.layers] == names
    for x in s.layers:
        norms = np.array([d["layers"][x.name]["norm"] for d in dicts])
        finite = norms[np.isfinite(norms)]
        assert (x.median_norm, x.max_norm) == (float(np.median(finite)), float(finite.max()))
        assert (x.kept, x.finite) == (len(dicts), len(finite))
        acts = [d["layers"][x.name].get("act_norm") for d in dicts]
        acts = [a for a in acts if a is not None and math.isfinite(a)]
        assert x.medians["act_norm"] == (float(np.median(acts)) if acts else None)
        ratios = [d["layers"][x.name].get("update_ratio") for d in dicts]
        ratios = [v for v in ratios if v is not None and math.isfinite(v)]
        assert x.medians.get("update_ratio") == (float(np.median(ratios)) if ratios else None)
        for status, count in x.statuses.items():
            assert count == sum(d["layers"][x.name].get("status") == status for d in dicts)
        assert x.spikes == sum(d["layers"][x.name].get("spike", False) for d in dicts)
        assert x.last == StepRecord.from_dict(dicts[-1]).layers[x.name]
    totals = np.array([d["total_norm"] for d in dicts])
    finite = totals[np.isfinite(totals)]
    assert (s.total_min, s.total_median, s.total_max) == (
        float(finite.min()), float(np.median(finite)), float(finite.max()))
    assert s.nonfinite_steps == (150, 151) and s.spike_steps == tuple(range(0, 300, 5))
    assert s.statistics[:2] == ("norm", "act_norm") and "update_ratio" in s.statistics


def test_the_report_reads_the_same_numbers(log, tmp_path):
    path, header, dicts = log
    records = read_runs(path)[0].records
    text = markdown_report(records, header=header)
    assert text == markdown_report([StepRecord.from_dict(d) for d in dicts], header=header)
    assert text == markdown_report(list(records), header=header)  # read as the columns they are
    head, rows = layer_table(records)
    for row, name in zip(rows, dicts[-1]["layers"]):
        norms = np.array([d["layers"][name]["norm"] for d in dicts])
        finite = norms[np.isfinite(norms)]
        cells = dict(zip(head, row))
        assert cells["layer"] == name
        assert cells["last norm"] == fmt(dicts[-1]["layers"][name]["norm"])
        assert cells["median norm"] == of_finite(float(np.median(finite)), len(finite), len(norms))
    assert main(["report", str(path), "--out", str(tmp_path / "out")]) == 0
    written = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    layers_part = text[text.index("## Layers"):]
    assert written.endswith(layers_part) and "## Run overview" in written


def test_listing_the_runs_keeps_no_layers(log, capsys):
    path, _header, _dicts = log
    assert main(["report", str(path), "--list"]) == 0
    assert read_runs(path)[0].describe() in capsys.readouterr().out
    listed, = scan_log(path, layers=False).runs
    assert len(listed.records) == 300 and listed.records[-1].step == 299
    with pytest.raises(RuntimeError, match="listed without their layers"):
        listed.records[0].layers["0.0"]


def _synthetic(path, records, width):
    stat = {"norm": 0.5, "act_norm": 0.25, "status": "ok", "spike": False, "reason": ""}
    with open(path, "w", encoding="utf-8") as f:
        for step in range(records):
            layers = {f"layer{k}": dict(stat, norm=0.1 + (step * k % 17) / 10)
                      for k in range(width)}
            if step % 4 == 0:
                for s in layers.values():
                    s["update_ratio"] = 0.001 * step
            f.write(json.dumps({"step": step, "total_norm": 1.0 + step % 3, "clip_coef": 1.0,
                                "loss": 1.0, "layers": layers}, separators=(",", ":")) + "\n")


def test_memory_grows_with_columns_not_objects(tmp_path):
    """Objects cost ~650 bytes per layer and record (and the old reader held the file twice,
    ~250 bytes more); columns cost ~30. The bound is 100 bytes per layer-record."""
    records, width = 1500, 100
    path = tmp_path / "wide.jsonl"
    _synthetic(path, records, width)
    bound = 100 * records * width + 3_000_000
    tracemalloc.start()
    try:
        run, = read_runs(path)
        read_peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        s = summarize(run.records)
        text = markdown_report(run.records)
        total = sum(r.layers[n].norm for r in run.records for n in r.layers)  # a heat map's reads
        use_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(run.records) == records and s.kept == records and "layer99" in text
    assert math.isfinite(total)
    assert read_peak < bound, f"reading took {read_peak / (records * width):.0f} B/layer-record"
    assert use_peak < bound, f"reporting took {use_peak / (records * width):.0f} B/layer-record"
