"""The README quick-start, runnable as written: python examples/quickstart.py"""

import torch
from torch import nn

from gradwatch import GradWatch, JsonlLogger, Thresholds

torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 2))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
loss_fn = nn.CrossEntropyLoss()
loader = [(torch.randn(32, 20), torch.randint(0, 2, (32,))) for _ in range(100)]

with GradWatch(model, optimizer=opt, clip=1.0, thresholds=Thresholds(vanishing=1e-6),
               loggers=[JsonlLogger("quickstart.jsonl")]) as watch:
    for x, y in loader:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        watch.note_loss(loss)           # optional: logged, and tells "stalled" from "converged"
        opt.step()                      # gradwatch measures (and clips) right before this

print(watch.summary())
last = watch.history[-1]
print(f"step {last.step}: total norm {last.total_norm:.3f}, flagged {last.flagged}")
