"""gradwatch under DDP on one machine with 2 CPU processes.

Run:
    torchrun --standalone --nproc_per_node=2 examples/ddp_torchrun.py

Every rank records the same parameter-gradient norms (DDP averages gradients during backward;
gradwatch reads them at optimizer.step()), so clipping keeps the replicas identical. The
activation-gradient norms (act_norm) are per rank: each describes that rank's own micro-batch.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from gradwatch import GradWatch


def main() -> None:
    dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR/PORT
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights everywhere (DDP also broadcasts rank 0's)
    model = DDP(nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                              nn.Linear(64, 1)))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    data = torch.Generator().manual_seed(1234 + rank)  # each rank its own shard of the data

    with GradWatch(model, optimizer=opt, clip=1.0) as watch:
        for step in range(20):
            x = torch.randn(32, 20, generator=data)
            y = x[:, :1] * 3 + 0.1 * torch.randn(32, 1, generator=data)
            opt.zero_grad(set_to_none=True)
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()  # gradwatch measures (and clips) right before this

    last = watch.history[-1]
    totals = [None] * world
    dist.all_gather_object(totals, [r.total_norm for r in watch.history])
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(params) for _ in range(world)]
    dist.all_gather(gathered, params)
    if rank == 0:
        print(watch.summary())
        print(f"total norms identical on all ranks: {all(t == totals[0] for t in totals)}")
        print(f"parameters identical on all ranks:  "
              f"{all(torch.equal(g, gathered[0]) for g in gathered)}")
    dist.barrier()
    print(f"rank {rank}: step {last.step} total_norm {last.total_norm:.4f} "
          f"clip_coef {last.clip_coef:.3f} act_norm('module.4') "
          f"{last.layers['module.4'].act_norm:.4f} (per rank)", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
