"""A broken model and what gradwatch says about it: a 20-layer sigmoid MLP (small init)."""

import torch
from torch import nn

from gradwatch import GradWatch
from gradwatch.verdict.diagnosis import format_findings

torch.manual_seed(0)
layers = []
for _ in range(20):
    layers += [nn.Linear(32, 32), nn.Sigmoid()]
model = nn.Sequential(*layers, nn.Linear(32, 2))
for m in model:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.1)  # too small for sigmoid's slope of <= 1/4
opt = torch.optim.SGD(model.parameters(), lr=0.1)
x, y = torch.randn(256, 32), torch.randint(0, 2, (256,))

with GradWatch(model, optimizer=opt) as watch:
    for step in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()

print(format_findings(watch.diagnose()))  # the same text opens watch.summary()
