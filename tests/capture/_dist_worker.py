"""Multi-process scenarios for tests/capture/test_distributed.py (run as a script, 2 CPU ranks, gloo).

``python tests/capture/_dist_worker.py {ddp,fsdp} OUT_DIR`` spawns two ranks; each writes
``OUT_DIR/rank{r}.json`` (plain floats only, written atomically), waits for the other one, and
exits without tearing the process group down (see `_main`). The model, data and the single-process reference
live here too so the test and the ranks build exactly the same thing.
"""

from __future__ import annotations

import json
import math
import os
import sys
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

WORLD = 2
BATCH = 8  # full batch; rank r gets rows [4r, 4r + 4)
LR = 0.1
STEPS = 3


class ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies each sample's gradient by ``factor[i]``."""

    @staticmethod
    def forward(ctx, h, factor):
        ctx.save_for_backward(factor)
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad):
        (factor,) = ctx.saved_tensors
        return grad * factor[:, None], None


class Net(nn.Module):
    """fc3 has a single output row, so FSDP2 gives rank 1 an empty shard of its weight."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 1)

    def forward(self, x, factor=None):
        h = torch.tanh(self.fc2(torch.tanh(self.fc1(x))))
        if factor is not None:
            h = ScaleGrad.apply(h, factor)
        return self.fc3(h)


LAYERS = ("fc1", "fc2", "fc3")


def make_net() -> Net:
    torch.manual_seed(0)
    return Net()


def make_net_params() -> list[float]:
    return [v for p in make_net().parameters() for v in p.detach().flatten().tolist()]


def data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    return torch.randn(BATCH, 6, generator=g), torch.randn(BATCH, 1, generator=g)


def shard(t: torch.Tensor, rank: int) -> torch.Tensor:
    n = BATCH // WORLD
    return t[rank * n:(rank + 1) * n]


def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(out, y)


def reference(clip: float | None = None) -> list[dict]:
    """Single process, full batch, plain torch: per-step layer and total norms (pre-clip)."""
    model = make_net()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    out = []
    for step in range(STEPS):
        opt.zero_grad()
        x, y = data(step)
        loss_fn(model(x), y).backward()
        layers = {name: torch.linalg.vector_norm(torch.cat(
            [p.grad.double().flatten() for p in getattr(model, name).parameters()])).item()
            for name in LAYERS}
        total = torch.linalg.vector_norm(torch.cat(
            [p.grad.double().flatten() for p in model.parameters()])).item()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        out.append({"layers": layers, "total": total})
    return out + [{"params": _flat_params(model)}]


def _record(rec) -> dict:
    return {"step": rec.step, "total": rec.total_norm, "coef": rec.clip_coef,
            "layers": {k.removeprefix("module."): s.norm for k, s in rec.layers.items()},
            "acts": {k.removeprefix("module."): s.act_norm for k, s in rec.layers.items()},
            "flagged": [k.removeprefix("module.") for k in rec.flagged],
            "first_nonfinite": (rec.first_nonfinite or "").removeprefix("module.") or None,
            "skipped": rec.skipped}


def _flat_params(model: nn.Module) -> list[float]:
    return [v for p in model.parameters() for v in p.detach().flatten().tolist()]


def run_ddp(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    from gradwatch import GradWatch

    result: dict = {}
    for clip in (None, 0.05):  # 0.05 is below every step's norm: each step is clipped
        ddp = DDP(make_net())
        opt = torch.optim.SGD(ddp.parameters(), lr=LR)
        with GradWatch(ddp, optimizer=opt, clip=clip) as watch:
            for step in range(STEPS):
                opt.zero_grad()
                x, y = data(step)
                loss_fn(ddp(shard(x, rank)), shard(y, rank)).backward()
                opt.step()
        key = "plain" if clip is None else "clip"
        result[key] = [_record(r) for r in watch.history]
        result[key + "_params"] = _flat_params(ddp.module)
    # A NaN born on rank 0 only, between fc2 and fc3 (factor inf for rank 0's samples).
    ddp = DDP(make_net())
    opt = torch.optim.SGD(ddp.parameters(), lr=LR)
    with GradWatch(ddp, optimizer=opt, on_nonfinite="skip") as watch:
        opt.zero_grad()
        x, y = data(0)
        factor = torch.full((BATCH // WORLD,), math.inf if rank == 0 else 1.0)
        loss_fn(ddp(shard(x, rank), factor), shard(y, rank)).backward()
        opt.step()
    result["nan"] = [_record(r) for r in watch.history]
    result["nan_params"] = _flat_params(ddp.module)
    return result


def run_fsdp(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.debug import CommDebugMode

    from gradwatch import GradWatch

    mesh = init_device_mesh("cpu", (WORLD,))

    def sharded() -> Net:
        model = make_net()
        for name in LAYERS:
            fully_shard(getattr(model, name), mesh=mesh)
        return fully_shard(model, mesh=mesh)

    calls = []
    real_all_reduce = dist.all_reduce

    def counting_all_reduce(*args, **kwargs):
        calls.append(1)
        return real_all_reduce(*args, **kwargs)

    result: dict = {"records": [], "collectives": [], "all_reduce_calls": [], "clip": []}
    model = sharded()  # GradWatch goes on after fully_shard (it replaces the parameters)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    watch = GradWatch(model)
    for step in range(STEPS):
        opt.zero_grad()
        x, y = data(step)
        loss_fn(model(shard(x, rank)), shard(y, rank)).backward()
        calls.clear()
        dist.all_reduce = counting_all_reduce
        try:
            with CommDebugMode() as comm:
                rec = watch.step()
        finally:
            dist.all_reduce = real_all_reduce
        result["collectives"].append(comm.get_total_counts())
        result["all_reduce_calls"].append(len(calls))
        result["records"].append(_record(rec))
        opt.step()
    watch.close()
    # Clipping: gradwatch's clip vs torch.nn.utils.clip_grad_norm_ on the same sharded grads.
    model = sharded()
    watch = GradWatch(model, clip=0.05)
    x, y = data(0)
    loss_fn(model(shard(x, rank)), shard(y, rank)).backward()
    saved = [p.grad.to_local().clone() for p in model.parameters()]
    rec = watch.step()
    ours = [v for p in model.parameters() for v in p.grad.to_local().flatten().tolist()]
    for p, g in zip(model.parameters(), saved):
        p.grad.to_local().copy_(g)
    total = torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
    theirs = [v for p in model.parameters() for v in p.grad.to_local().flatten().tolist()]
    result["clip"] = {"ours": ours, "theirs": theirs, "total": rec.total_norm,
                      "torch_total": total.full_tensor().item(), "coef": rec.clip_coef}
    watch.close()
    # The optimizer= path: measured (and clipped) inside opt.step(), DTensor params included.
    model = sharded()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    with GradWatch(model, optimizer=opt, clip=0.05) as watch:
        loss_fn(model(shard(x, rank)), shard(y, rank)).backward()
        opt.step()
    result["optimizer_path"] = _record(watch.history[0])
    return result


def write_result(out_dir: str, rank: int, result: dict) -> None:
    """Writes ``rank{rank}.json`` atomically: the file is either absent or complete."""
    path = os.path.join(out_dir, f"rank{rank}.json")
    with open(path + ".part", "w") as f:
        json.dump(result, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".part", path)


def _main(rank: int, scenario: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{out_dir}/rendezvous", rank=rank,
                           world_size=WORLD, timeout=timedelta(seconds=60))
    torch.set_num_threads(1)
    result = run_ddp(rank) if scenario == "ddp" else run_fsdp(rank)
    write_result(out_dir, rank, result)
    dist.barrier()  # both ranks' results are on disk before either one tears anything down
    # No destroy_process_group() and no interpreter shutdown: DDP and the device mesh keep the
    # gloo group alive past destroy_process_group(), and its C++ destructor at exit aborts the
    # process now and then ("terminate called without an active exception", SIGABRT; a plain
    # DDP script does it too). Nothing is left to clean up in a rank that exits here.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    import torch.multiprocessing as mp

    mp.spawn(_main, args=(sys.argv[1], sys.argv[2]), nprocs=WORLD, join=True)
