"""DDP and FSDP2 on CPU (gloo, 2 spawned ranks) against a single-process full-batch reference.

Each scenario runs once per module in a subprocess (``tests/capture/_dist_worker.py``) under a hard
timeout, and ranks hand back plain floats through JSON files in ``tmp_path``: the tests judge
those files, not the exit code of torch's process-group teardown. Select these tests with
``-m multiprocess``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import _dist_worker as w
import gradwatch

pytestmark = pytest.mark.multiprocess

TIMEOUT_S = 150  # a healthy run takes ~25 s on 2 cores; init timeouts inside are 60 s


def _run(scenario: str, out: Path, worker: Path | None = None) -> list[dict]:
    """Runs ``scenario`` on 2 ranks and returns what each rank wrote; never hangs.

    The verdict is on the results files, which a rank writes atomically when its scenario is
    done: a rank that failed leaves none (the test fails with the log). An exit code that is
    not 0 although every rank wrote its results can only come from tearing down afterwards; it
    is reported as a warning, not as a failure of the scenario.
    """
    worker = worker or Path(__file__).with_name("_dist_worker.py")
    root = str(Path(gradwatch.__file__).resolve().parents[1])  # the ranks import this gradwatch
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.Popen([sys.executable, str(worker), scenario, str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)  # its own group: a timeout kills the ranks too
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{scenario} ranks did not finish within {TIMEOUT_S} s")
    missing = [r for r in range(w.WORLD) if not (out / f"rank{r}.json").exists()]
    if missing:
        pytest.fail(f"{scenario}: rank(s) {missing} wrote no results (exit code "
                    f"{proc.returncode}):\n{log[-4000:]}")
    if proc.returncode != 0:
        warnings.warn(f"{scenario}: every rank wrote its results, then the run exited with "
                      f"{proc.returncode} while tearing down:\n{log[-1000:]}", RuntimeWarning)
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


def test_runs_are_judged_by_the_results_files_not_the_teardown_exit_code(tmp_path):
    """A run that aborts after every rank wrote its results passes (with a warning); one where
    a rank wrote nothing fails and names it, whatever the exit code."""
    fake = tmp_path / "fake_worker.py"
    fake.write_text("import json, os, sys\n"
                    "for r in (0, 1) if sys.argv[1] == 'both' else (0,):\n"
                    "    with open(os.path.join(sys.argv[2], f'rank{r}.json'), 'w') as f:\n"
                    "        json.dump({'rank': r}, f)\n"
                    "os.abort()  # as gloo's teardown does now and then\n")
    for name in ("both", "one"):
        (tmp_path / name).mkdir()
    with pytest.warns(RuntimeWarning, match="while tearing down"):
        assert _run("both", tmp_path / "both", fake) == [{"rank": 0}, {"rank": 1}]
    with pytest.raises(pytest.fail.Exception, match=r"rank\(s\) \[1\] wrote no results"):
        _run("one", tmp_path / "one", fake)


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
