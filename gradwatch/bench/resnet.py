"""The Keras MNIST tutorial's small ResNet (seed 003) with Keras' ``he_normal`` convs:
conv 64 7x7/2, BN, max-pool 3/2, residual blocks 64, 64, 128/2, 128, 256/2, 256, dense head
(He et al., CVPR 2016)."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["MnistResNet", "he_normal_"]


def he_normal_(weight: Tensor) -> Tensor:
    """Keras' ``he_normal``: a normal truncated at ±2σ, rescaled so its std is √(2 / fan_in).

    Keras' ``VarianceScaling(2.0, "fan_in", "truncated_normal")`` divides the normal's σ by
    0.87962566103423978 (the std of a standard normal truncated at ±2) before truncating.
    """
    fan_in = weight[0].numel()
    std = math.sqrt(2.0 / fan_in) / 0.87962566103423978
    with torch.no_grad():
        return nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class _ResBlock(nn.Module):
    """Two 3x3 convs with BN and ReLU; a 1x1 strided projection when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.proj = None
        if stride != 1 or cin != cout:
            self.proj = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + (x if self.proj is None else self.proj(x)))


class MnistResNet(nn.Module):
    """The Keras tutorial's ResNet for 28x28 digits (He et al., CVPR 2016, shrunk for MNIST).

    conv 7x7/64 stride 2 + ReLU + BN, max-pool 3x3 stride 2, residual blocks
    (64, 64, 128/2, 128, 256/2, 256), flatten, dense logits. Every conv is ``he_normal``
    (Keras' truncated normal, zero conv biases); the dense head is Glorot-uniform, zero bias.

    Args:
        classes: Number of outputs.
        stages: ``(channels, stride)`` per residual block.
    """

    def __init__(self, classes: int = 10, stages: Sequence[tuple[int, int]] = (
            (64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1))) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 64, 7, stride=2, padding=3)
        self.stem_bn = nn.BatchNorm2d(64)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)
        blocks, cin, size = [], 64, 7
        for cout, stride in stages:
            blocks.append(_ResBlock(cin, cout, stride))
            cin, size = cout, math.ceil(size / stride)
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(cin * size * size, classes)
        from .nets import init_linear_  # nets re-exports this module: import late

        init_linear_(self.output, "glorot_uniform")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                he_normal_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stem_bn(torch.relu(self.stem(x))))
        return self.output(self.blocks(x).flatten(1))
