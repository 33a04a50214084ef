"""On CUDA, a GradWatch step never makes the host wait for the device (skipped without CUDA).

Every training step (forward, backward, ``optimizer.step()`` or ``watch.step()``) runs under
``torch.cuda.set_sync_debug_mode("error")``, which raises on any synchronising CUDA call
(``.item()``, ``.tolist()``, a blocking device-to-host copy, ...). The records still arrive,
one step late (the step's numbers are copied without blocking and read at the next step) and
all of them by ``close()``, and they hold the numbers plain torch computes for that step.
"""

from __future__ import annotations

import contextlib
import math
from typing import Iterator

import pytest
import torch

from conftest import batch, loss_of, mlp
from gradwatch import GradWatch, StepRecord

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs CUDA: checks that GradWatch steps never "
                                       "synchronise the host with the device")

STEPS = 7


@contextlib.contextmanager
def _no_sync() -> Iterator[None]:
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _setup() -> tuple[torch.nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    model = mlp().cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = (t.cuda() for t in batch(8))
    # PyTorch's own first-use work (cuBLAS handles, allocator) happens before any watch exists
    loss_of(model, x, y).backward()
    model.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return model, opt, x, y


def _reference(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Per-layer and total gradient norms, left on the device (no sync)."""
    norms = {name: torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(p.grad) for p in module.parameters(recurse=False)]))
        for name, module in model.named_modules() if any(True for _ in module.parameters(False))}
    norms["(total)"] = torch.linalg.vector_norm(torch.stack(list(norms.values())))
    return norms


def _check(records: list[StepRecord], refs: list[dict[str, torch.Tensor]], every: int) -> None:
    assert [r.step for r in records] == list(range(0, STEPS, every))
    for record in records:
        ref = {k: v.item() for k, v in refs[record.step].items()}
        assert math.isclose(record.total_norm, ref.pop("(total)"), rel_tol=1e-5)
        assert list(record.layers) == list(ref)
        for name, value in ref.items():
            assert math.isclose(record.layers[name].norm, value, rel_tol=1e-5), name


def _arrived_late(seen: list[StepRecord], i: int, every: int) -> None:
    """After step ``i``: no record of step ``i`` yet (reading it would sync), but every
    recorded step before it, at the latest by the next recorded step."""
    steps = [r.step for r in seen]
    earlier = list(range(0, i, every))  # recorded steps before i
    assert steps == earlier[:len(steps)], f"after step {i}: {steps}"
    assert len(steps) >= len(range(0, i - every + 1, every)), f"after step {i}: {steps}"


@pytest.mark.parametrize("options", [{}, {"every": 3}, {"clip": 1.0}],
                         ids=["defaults", "every=3", "clip=1.0"])
def test_optimizer_hooked_steps_never_sync_and_records_arrive_one_step_late(options):
    model, opt, x, y = _setup()
    seen: list[StepRecord] = []
    watch = GradWatch(model, optimizer=opt, loggers=[seen.append], **options)
    every = options.get("every", 1)
    refs = []
    for i in range(STEPS):
        with _no_sync():
            opt.zero_grad(set_to_none=True)
            loss_of(model, x, y).backward()
            refs.append(_reference(model))
            opt.step()
        _arrived_late(seen, i, every)
    watch.close()
    _check(seen, refs, every)
    assert [r.step for r in watch.history] == [r.step for r in seen]


def test_manual_watch_step_never_syncs_and_close_publishes_the_last_record():
    model, opt, x, y = _setup()
    seen: list[StepRecord] = []
    watch = GradWatch(model, loggers=[seen.append])
    refs, losses = [], []
    for i in range(STEPS):
        with _no_sync():
            opt.zero_grad(set_to_none=True)
            loss = loss_of(model, x, y)
            loss.backward()
            refs.append(_reference(model))
            losses.append(loss.detach())
            watch.step(loss=loss)  # the loss travels with the record's copy: no sync either
            opt.step()
        _arrived_late(seen, i, 1)
    watch.close()
    _check(seen, refs, 1)
    assert [r.step for r in watch.history] == list(range(STEPS))
    assert [r.loss for r in seen] == pytest.approx([v.item() for v in losses], rel=1e-6)
