"""Dead units from a small batch: torchvision VGG-11 (random init) at batch 8, under the default
watch, and whether the units gradwatch calls dead are dead on fresh inputs.

VGG-11 (10 classes, 64 px) trains on the zoo's learnable image task
(`benchmarks.zoo.tasks.image_task`, batch 8) with AdamW, the loss passed with ``note_loss``. It
prints the loss (mean of the first and last five steps), gradwatch's findings and notes, each
layer's recorded ``dead_frac`` at or above 0.3, and, with plain torch after training, the share
of ``classifier.0``'s units (after its ReLU) that fire on none of 8, 32, 64 and 256 fresh
inputs (train mode, as in training: dropout follows that ReLU).

    python benchmarks/dead_window.py                  # 40 steps, lr 1e-4 (about 2 minutes)
    python benchmarks/dead_window.py --steps 100
"""

from __future__ import annotations

import argparse
import os
import sys

import torch
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.zoo.tasks import image_task  # noqa: E402
from gradwatch import GradWatch  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps (default 40)")
    parser.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate")
    parser.add_argument("--batch", type=int, default=8, help="batch size (default 8)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or not args.lr > 0:
        parser.error(f"--steps and --batch must be >= 1 and --lr > 0, got steps={args.steps}, "
                     f"batch={args.batch}, lr={args.lr}")
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.vgg11(num_classes=10)
    task = image_task(size=64, batch=args.batch)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    losses: list[float] = []
    with GradWatch(model, optimizer=opt) as watch:
        for step in range(args.steps):
            x, y = task(step)
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            watch.note_loss(loss)
            opt.step()
            losses.append(loss.item())
            print(f"\rstep {step + 1}/{args.steps} loss {losses[-1]:.3f}", end="",
                  file=sys.stderr, flush=True)
        print(file=sys.stderr)
        findings, notes = watch.diagnose(), watch.notes()
        shares: dict[str, list[tuple[int, float]]] = {}
        for r in watch.history:
            for name, stat in r.layers.items():
                v = stat.values.get("dead_frac")
                if v is not None and v >= 0.3:
                    shares.setdefault(name, []).append((r.step, round(v, 2)))
        flagged = sorted({r.step for r in watch.history if r.flagged})
    outs: list[torch.Tensor] = []
    hook = model.classifier[1].register_forward_hook(lambda m, i, o: outs.append(o.detach()))
    with torch.no_grad():
        for k in range(-(-256 // args.batch)):
            model(task(10_000 + k)[0])
    hook.remove()
    fresh = torch.cat(outs)
    k = min(5, len(losses))
    print(f"loss {sum(losses[:k]) / k:.3f} -> {sum(losses[-k:]) / k:.3f} (mean of first/last {k})")
    print("findings:", [(f.kind, f.layers, f.first_step, f.steps) for f in findings] or "none")
    print("notes:", [(f.kind, f.layers, f.first_step, f.steps, f.note) for f in notes] or "none")
    print("steps with a flagged layer:", flagged or "none")
    print("dead_frac >= 0.3 (step, share):", shares or "none")
    for n in (8, 32, 64, 256):
        silent = (fresh[:n] <= 0).all(0).double().mean().item()
        print(f"classifier.0 units firing on none of {n} fresh inputs: {100 * silent:.1f}%")


if __name__ == "__main__":
    main()
