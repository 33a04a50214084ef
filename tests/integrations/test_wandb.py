"""WandbLogger against the real wandb in offline mode: what the run's .wandb log holds afterwards.

The run's transaction log (``run-<id>.wandb``) is read back with a reader written here from its
format (a LevelDB-style log of 32 KiB blocks; each chunk has a CRC32, a length and a type) and
wandb's own protobuf ``Record``; values are compared with the records' numbers exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Iterator

import pytest
import torch

from conftest import batch, loss_of, mlp
from gradwatch import Finding, GradWatch, LayerStat, Status, StepRecord, Thresholds

wandb = pytest.importorskip("wandb")
pb = pytest.importorskip("wandb.proto.wandb_internal_pb2")
from gradwatch.integrations.wandb import WandbLogger  # noqa: E402

_BLOCK, _HEADER = 32768, 7


@pytest.fixture(autouse=True)
def _offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield
    if wandb.run is not None:  # a failed test must not leave its run to the next one
        wandb.run.finish()
    wandb.teardown()  # the next test's wandb.init reads its own WANDB_DIR


def _records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", "not a wandb transaction log"
    pos, pending = _HEADER, b""
    while pos + _HEADER <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < _HEADER:  # block trailer padding
            pos += left
            continue
        crc, length, kind = struct.unpack("<IHB", data[pos:pos + _HEADER])
        if crc == length == kind == 0:
            pos += left
            continue
        if pos + _HEADER + length > len(data):  # still being written
            return
        chunk = data[pos + _HEADER:pos + _HEADER + length]
        assert zlib.crc32(bytes([kind]) + chunk) == crc, f"CRC mismatch at byte {pos}"
        pos += _HEADER + length
        pending += chunk
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def _finished_log(tmp_path: Path, timeout: float = 60.0) -> list[Any]:
    """The records of the one offline run under tmp_path, once its exit record is on disk.

    ``run.finish()`` can return before wandb's service process has written the tail of the log.
    """
    deadline = time.monotonic() + timeout
    while True:
        logs = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
        assert len(logs) <= 1, f"expected one run, found {logs}"
        records = list(_records(logs[0])) if logs else []
        if any(r.WhichOneof("record_type") == "exit" for r in records):
            return records
        assert time.monotonic() < deadline, "the run's log has no exit record: not finished?"
        time.sleep(0.05)


def _run_log(tmp_path: Path) -> tuple[dict[int, dict[str, Any]], dict[str, Any], Path]:
    """(history rows by step, config by key, files dir) of the one offline run under tmp_path."""
    history: dict[int, dict[str, Any]] = {}
    config: dict[str, Any] = {}
    [log] = sorted(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    for record in _finished_log(tmp_path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            row = {"/".join(item.nested_key) or item.key: json.loads(item.value_json)
                   for item in record.history.item}
            assert record.history.step.num not in history, "a step was logged twice"
            history[record.history.step.num] = row
        elif kind in ("config", "run"):
            items = record.config.update if kind == "config" else record.run.config.update
            config.update({item.key: json.loads(item.value_json) for item in items})
    return history, config, log.parent / "files"


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def _train(logger: WandbLogger, *, steps: int = 6, every: int = 1,
           nan_at: int | None = None) -> GradWatch:
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    watch = GradWatch(model, optimizer=opt, clip=0.42, every=every, loggers=[logger])
    x, y = batch(8)
    for i in range(steps):
        opt.zero_grad()
        loss_of(model, x, y).backward()
        if i == nan_at:
            model[2].weight.grad[0, 0] = float("nan")
        with pytest.warns(RuntimeWarning) if i == nan_at else contextlib.nullcontext():
            opt.step()
        if i == nan_at:  # repair the weights so that later steps are finite again
            with torch.no_grad():
                for p in model.parameters():
                    p.nan_to_num_(0.0)
    watch.close()
    return watch


def test_every_number_of_every_record_is_logged_exactly(tmp_path):
    logger = WandbLogger(project="gw-test")
    watch = _train(logger, nan_at=3)
    history, config, _ = _run_log(tmp_path)
    records = watch.history
    # GradWatch hands its run header to start_run before the first record
    assert config["grad"]["layers"] == list(watch.layer_names) == ["0", "2", "4"]
    assert config["grad"]["thresholds"]["vanishing"] == watch.thresholds.vanishing
    assert sorted(history) == [r.step for r in records] == list(range(6))
    assert any(r.clip_coef < 1.0 for r in records)  # clipping was exercised
    codes = {s.value: i for i, s in enumerate(Status)}
    for record in records:
        row = history[record.step]
        assert _same(row["grad/total_norm"], record.total_norm)
        assert _same(row["grad/clip_coef"], record.clip_coef)
        assert row["grad/spike"] == int(record.spike)
        assert row["grad/skipped"] == int(record.skipped)
        assert row["grad/flagged_layers"] == len(record.flagged)
        assert row.get("grad/first_nonfinite") == record.first_nonfinite
        for name, stat in record.layers.items():
            assert _same(row[f"grad/{name}/norm"], stat.norm)
            assert _same(row[f"grad/{name}/act_norm"], stat.act_norm)
            assert row[f"grad/{name}/spike"] == int(stat.spike)
            assert row[f"grad/{name}/status"] == codes[stat.status.value]
            numeric = {k for k, v in stat.to_dict().items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            logged = {k.split("/")[-1] for k in row if k.startswith(f"grad/{name}/")}
            assert numeric | {"spike", "status"} == logged  # every statistic, nothing else
    bad = records[3]
    assert bad.first_nonfinite == "2" and history[3]["grad/first_nonfinite"] == "2"
    assert history[3]["grad/2/status"] == codes["nonfinite"]
    assert math.isnan(history[3]["grad/total_norm"])
    assert history[2]["grad/2/status"] == codes["ok"]


def test_every_logs_only_recorded_steps(tmp_path):
    watch = _train(WandbLogger(project="gw-test"), steps=7, every=3)
    history, _, _ = _run_log(tmp_path)
    assert sorted(history) == [r.step for r in watch.history] == [0, 3, 6]


def test_start_run_puts_the_header_into_the_config(tmp_path):
    logger = WandbLogger(project="gw-test", config={"lr": 0.1})
    thresholds = Thresholds(vanishing=1e-6)
    logger.start_run({"thresholds": thresholds, "layers": ("0", "2", "4"),
                      "options": {"clip": 1.0, "every": 1, "activations": True}})
    logger.close()
    _, config, _ = _run_log(tmp_path)
    assert config["lr"] == 0.1
    assert config["grad"] == {"thresholds": dataclasses.asdict(thresholds),
                              "layers": ["0", "2", "4"],
                              "options": {"clip": 1.0, "every": 1, "activations": True}}


def _table(files: Path, ref: dict[str, Any]) -> dict[str, Any]:
    assert ref["_type"] == "table-file"
    return json.loads((files / ref["path"]).read_text())


def test_statistics_findings_and_status_table_are_logged_generically(tmp_path):
    finding = Finding(kind="vanishing", layers=("hidden.0", "hidden.1"), evidence="1e-9 < 1e-7",
                      cause="saturating sigmoids", remedy="use ReLU",
                      remedies=("relu", "he_init"), first_step=4, steps=2)
    layers = {"hidden.0": LayerStat(norm=1e-9, act_norm=2e-9, status=Status.VANISHING,
                                    reason="below 1e-7", values={"update_ratio": 3e-4}),
              "hidden.1": LayerStat(norm=0.5, spike=True, reason="spike",
                                    values={"update_ratio": 0.25, "dead_frac": None})}
    record = StepRecord(step=4, total_norm=0.5, clip_coef=0.75, layers=layers,
                        findings=(finding,))
    logger = WandbLogger(project="gw-test", statuses="table")
    logger(record)
    logger.close()
    history, _, files = _run_log(tmp_path)
    row = history[4]
    assert row["grad/hidden.0/update_ratio"] == 3e-4 and row["grad/hidden.1/update_ratio"] == 0.25
    assert row["grad/hidden.0/norm"] == 1e-9 and row["grad/hidden.0/act_norm"] == 2e-9
    assert "grad/hidden.1/act_norm" not in row and "grad/hidden.1/dead_frac" not in row  # None
    assert "grad/hidden.0/status" not in row  # statuses go to the table instead
    assert row["grad/clip_coef"] == 0.75 and row["grad/spike_layers"] == 1
    assert row["grad/flagged_layers"] == 1 and row["grad/findings/count"] == 1
    findings = _table(files, {k.split("/", 2)[2]: v for k, v in row.items()
                              if k.startswith("grad/findings/") and k != "grad/findings/count"})
    assert findings["columns"] == list(finding.to_dict())
    assert findings["data"] == [["vanishing", "hidden.0, hidden.1", "1e-9 < 1e-7",
                                 "saturating sigmoids", "use ReLU", "relu, he_init",
                                 "relu, he_init", 4, 2]]  # plans: each code alone (default)
    statuses = _table(files, {k.split("/", 2)[2]: v for k, v in row.items()
                              if k.startswith("grad/statuses/")})
    assert statuses["columns"] == ["layer", "status", "spike", "reason"]
    assert statuses["data"] == [["hidden.0", "vanishing", False, "below 1e-7"],
                                ["hidden.1", "ok", True, "spike"]]


def test_a_borrowed_run_keeps_running_and_an_active_run_is_used(tmp_path):
    run = wandb.init(project="gw-test")
    borrowed, active = WandbLogger(run, prefix="a"), WandbLogger(prefix="b")
    record = StepRecord(step=0, total_norm=2.0, layers={"fc": LayerStat(2.0)})
    borrowed(record)
    active(record)
    assert active.run is run
    borrowed.close()
    active.close()
    assert wandb.run is run  # neither logger finished the user's run
    run.log({"after": 1.0}, step=1)
    run.finish()
    history, _, _ = _run_log(tmp_path)
    assert history[0]["a/fc/norm"] == history[0]["b/fc/norm"] == 2.0
    assert history[1]["after"] == 1.0
    with pytest.raises(RuntimeError, match="closed"):
        active(record)


def test_bad_arguments_say_what_to_fix():
    with pytest.raises(ValueError, match="`statuses` to be 'number' or 'table'"):
        WandbLogger(statuses="text")
    with pytest.raises(ValueError, match="`prefix`"):
        WandbLogger(prefix="")
    with pytest.raises(TypeError, match="`run` to be a wandb run"):
        WandbLogger(run=object())
    with pytest.raises(ValueError, match="either `run` or wandb.init"):
        WandbLogger(run=type("Run", (), {"log": lambda self: None})(), project="p")
    with pytest.raises(TypeError, match="`header` to be a mapping"):
        WandbLogger().start_run(["thresholds"])


def test_missing_wandb_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb now raises ImportError
    with pytest.raises(ImportError, match=r"pip install wandb \(or pip install -e '\.\[wandb\]'"):
        WandbLogger()


def test_importing_gradwatch_does_not_import_wandb():
    code = ("import sys, gradwatch, gradwatch.integrations; "
            "assert 'wandb' not in sys.modules, 'wandb imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
