"""The column reader against the definition of a log line: a line is read as
`StepRecord.from_dict` reads it, and skipped with the message `check_record_dict` gives."""

from __future__ import annotations

import json
import math

import pytest

from gradwatch import StepRecord
from gradwatch.io.logschema import check_record_dict
from gradwatch.io.runlog import scan_log
from gradwatch.io.runsummary import summarize

OK = {"norm": 0.5, "act_norm": 0.25, "status": "ok", "spike": False, "reason": ""}


def _line(step, layers, **extra):
    return {"step": step, "total_norm": 1.0, "layers": layers, **extra}


VALID = [
    {"a": OK, "b": OK},
    {"a": {"norm": 1}, "b": {"norm": 2.5, "act_norm": None}},  # ints, defaults, nulls
    {"a": dict(OK, update_ratio=None), "b": dict(OK, update_ratio=0.1)},  # a null statistic
    {"a": dict(OK, dead_frac=math.nan), "b": OK},  # a NaN statistic is a value
    {"a": {"update_ratio": 0.2, "norm": 0.1, "sat_frac": 0.0},  # keys in another order
     "b": {"sat_frac": 0.3, "norm": 0.1, "update_ratio": 0.4}},
    {"a": dict(OK, status="dead", reason="gone", spike=True), "b": {"norm": math.inf}},
    {"b": OK, "a": OK, "c": dict(OK, norm=0.0)},  # other layers, another order
    {},
]

INVALID = [
    {"a": OK, "b": dict(OK, norm=-1.0)},
    {"a": OK, "b": dict(OK, act_norm=-0.5)},
    {"a": {"act_norm": 0.5}},
    {"a": dict(OK, norm=True)},
    {"a": dict(OK, norm="0.5")},
    {"a": dict(OK, norm=None)},
    {"a": dict(OK, status="weird")},
    {"a": dict(OK, status=["ok"])},
    {"a": dict(OK, status=1)},
    {"a": dict(OK, spike=1)},
    {"a": dict(OK, reason=None)},
    {"a": OK, "b": dict(OK, update_ratio=True)},
    {"a": OK, "b": dict(OK, update_ratio="x")},
    {"a": OK, "b": [0.5]},
]


def _read(tmp_path, objs):
    path = tmp_path / "lines.jsonl"
    path.write_text("".join(json.dumps(o) + "\n" for o in objs), encoding="utf-8")
    return scan_log(path)


def _key(r):
    return json.dumps([r.to_dict(), [(type(s.norm).__name__, type(s.status).__name__,
                                      list(s.values.items())) for s in r.layers.values()]])


def test_valid_lines_read_as_from_dict_reads_them(tmp_path):
    objs = [_line(k, layers) for k, layers in enumerate(VALID)]
    objs.append({"step": len(objs), "total_norm": 2.0, "clip_coef": 0.5, "loss": None,
                 "first_nonfinite": None, "nonfinite_origin": ["odd"], "skipped": True,
                 "findings": [{"kind": "x", "layers": ["a"], "first_step": 1, "steps": 2}]})
    scan = _read(tmp_path, objs)
    assert scan.problems == []
    run, = scan.runs
    assert [_key(r) for r in run.records] == [_key(StepRecord.from_dict(o)) for o in objs]
    assert [list(r.layers) for r in run.records] == [list(o.get("layers", {})) for o in objs]


def test_invalid_lines_are_named_as_the_schema_names_them(tmp_path):
    objs = [_line(k, layers) for k, layers in enumerate(INVALID)]
    objs.append(_line(len(objs), VALID[0]))
    scan = _read(tmp_path, objs)
    assert [p.message for p in scan.problems] == [check_record_dict(o) for o in objs[:-1]]
    assert all(p.kind == "schema" for p in scan.problems)
    assert [r.step for r in scan.runs[0].records] == [len(INVALID)]


def test_a_finding_the_record_reader_rejects_is_named(tmp_path):
    bad = _line(0, VALID[0], findings=[{"kind": "x", "plans": [3]}])
    with pytest.raises(TypeError) as err:
        StepRecord.from_dict(bad)
    scan = _read(tmp_path, [bad, _line(1, VALID[0])])
    assert [p.message for p in scan.problems] == [f"StepRecord.from_dict rejected it ({err.value})"]


def test_the_summary_of_odd_layers_is_that_of_the_records(tmp_path):
    objs = [_line(k, layers) for k, layers in enumerate(VALID[:-1])]
    run, = _read(tmp_path, objs).runs
    from_lines = summarize([StepRecord.from_dict(o) for o in objs])
    assert repr(summarize(run.records)) == repr(from_lines)
    assert from_lines.statistics == ("norm", "act_norm", "sat_frac", "update_ratio", "dead_frac")
