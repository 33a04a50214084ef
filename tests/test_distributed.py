"""DDP and FSDP2 on CPU (gloo, 2 spawned ranks) against a single-process full-batch reference.

Each scenario runs once per module in a subprocess (``tests/_dist_worker.py``) under a hard
timeout, and ranks hand back plain floats through JSON files in ``tmp_path``. Select these tests
with ``-m multiprocess``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import _dist_worker as w

pytestmark = pytest.mark.multiprocess

TIMEOUT_S = 150  # a healthy run takes ~25 s on 2 cores; init timeouts inside are 60 s


def _run(scenario: str, out: Path) -> list[dict]:
    """Runs ``scenario`` on 2 ranks; returns each rank's results; never hangs."""
    worker = Path(__file__).with_name("_dist_worker.py")
    proc = subprocess.Popen([sys.executable, str(worker), scenario, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own group: a timeout kills the ranks too
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{scenario} ranks did not finish within {TIMEOUT_S} s")
    assert proc.returncode == 0, log[-4000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(w.WORLD)]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    return _run("ddp", tmp_path_factory.mktemp("ddp"))


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory):
    return _run("fsdp", tmp_path_factory.mktemp("fsdp"))


def _check_against_reference(records: list[dict], ref: list[dict]) -> None:
    assert [r["step"] for r in records] == list(range(w.STEPS))
    for rec, expected in zip(records, ref):
        assert rec["total"] == pytest.approx(expected["total"], rel=1e-6)
        assert rec["layers"].keys() == expected["layers"].keys()
        for name, norm in expected["layers"].items():
            assert rec["layers"][name] == pytest.approx(norm, rel=1e-6), name


# ----------------------------------------------------------------------------- DDP


def test_ddp_norms_identical_on_ranks_and_equal_full_batch_reference(ddp):
    r0, r1 = ddp
    for key in ("total", "layers", "coef", "flagged", "first_nonfinite"):
        assert [r[key] for r in r0["plain"]] == [r[key] for r in r1["plain"]], key
    _check_against_reference(r0["plain"], w.reference())


def test_ddp_activation_norms_are_per_rank_and_combine_to_the_full_batch_value(ddp):
    """Output gradients are never all-reduced: each rank reports its own micro-batch. For a mean
    loss over equal shards, sqrt(sum_r act_r**2) / world is the full-batch value."""
    import torch

    r0, r1 = ddp
    assert r0["plain"][0]["acts"]["fc3"] != r1["plain"][0]["acts"]["fc3"]
    model = w.make_net()
    x, y = w.data(0)
    out = model(x)
    out.retain_grad()
    w.loss_fn(out, y).backward()
    full = torch.linalg.vector_norm(out.grad.double()).item()
    a0, a1 = r0["plain"][0]["acts"]["fc3"], r1["plain"][0]["acts"]["fc3"]
    assert math.hypot(a0, a1) / w.WORLD == pytest.approx(full, rel=1e-6)


def test_ddp_clipping_keeps_ranks_identical_and_matches_clip_grad_norm(ddp):
    r0, r1 = ddp
    assert all(r["coef"] < 1 for r in r0["clip"])  # every step was really clipped
    assert [r["coef"] for r in r0["clip"]] == [r["coef"] for r in r1["clip"]]
    assert r0["clip_params"] == r1["clip_params"]  # bit-identical across ranks
    ref = w.reference(clip=0.05)
    _check_against_reference(r0["clip"], ref[:-1])
    assert r0["clip_params"] == pytest.approx(ref[-1]["params"], rel=1e-5, abs=1e-7)


def test_ddp_nonfinite_flags_and_origin_agree_across_ranks(ddp):
    """A NaN born on rank 0 only (between fc2 and fc3) is all-reduced into every rank's grads;
    both ranks flag the same layers, name fc2 as the origin, and skip the step together."""
    r0, r1 = ddp
    for rank in (r0, r1):
        (rec,) = rank["nan"]
        assert rec["flagged"] == ["fc1", "fc2"]
        assert rec["first_nonfinite"] == "fc2"
        assert rec["skipped"] and math.isnan(rec["total"])
        assert rec["layers"]["fc3"] == pytest.approx(w.reference()[0]["layers"]["fc3"], rel=1e-6)
    assert r0["nan_params"] == r1["nan_params"]
    assert r0["nan_params"] == pytest.approx(w.make_net_params(), abs=0)  # step skipped


# ----------------------------------------------------------------------------- FSDP2


def test_fsdp2_norms_equal_unsharded_reference_on_every_rank(fsdp):
    r0, r1 = fsdp
    assert [r["layers"] for r in r0["records"]] == [r["layers"] for r in r1["records"]]
    assert [r["total"] for r in r0["records"]] == [r["total"] for r in r1["records"]]
    _check_against_reference(r0["records"], w.reference())


def test_fsdp2_uses_one_collective_per_recorded_step(fsdp):
    """Counted twice: by CommDebugMode (any c10d or functional collective) and by wrapping
    torch.distributed.all_reduce, around each watch.step()."""
    for rank in fsdp:
        assert rank["collectives"] == [1] * w.STEPS
        assert rank["all_reduce_calls"] == [1] * w.STEPS


def test_fsdp2_clipping_matches_clip_grad_norm_on_the_sharded_model(fsdp):
    for rank in fsdp:
        clip = rank["clip"]
        assert clip["coef"] < 1
        assert clip["total"] == pytest.approx(clip["torch_total"], rel=1e-6)
        assert clip["total"] == pytest.approx(w.reference()[0]["total"], rel=1e-6)
        assert clip["ours"] == pytest.approx(clip["theirs"], rel=1e-6, abs=1e-9)


def test_fsdp2_optimizer_path_measures_and_clips_sharded_grads(fsdp):
    r0, r1 = fsdp
    assert r0["optimizer_path"]["layers"] == r1["optimizer_path"]["layers"]
    assert r0["optimizer_path"]["coef"] == pytest.approx(0.05 / w.reference()[0]["total"],
                                                         rel=1e-5)
