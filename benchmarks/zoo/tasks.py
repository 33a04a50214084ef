"""Learnable synthetic data: class templates plus noise, a permutation-chain language, sequences."""

from __future__ import annotations

from typing import Callable

import torch
from torch.nn import functional as F

__all__ = ["image_task", "perm_lm_task", "token_class_task", "seq2seq_task", "sequence_task"]

Batch = Callable[[int], tuple[torch.Tensor, ...]]


def _gen(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def image_task(*, size: int = 32, channels: int = 3, classes: int = 10, batch: int = 16,
               noise: float = 0.5, seed: int = 0) -> Batch:
    """Class-dependent smooth templates (8x8 noise upsampled) plus white noise; labels 0..classes-1."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(classes, channels, 8, 8, generator=g)
    templates = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    templates = templates / templates.std()

    def at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        gs = _gen(seed, step)
        y = torch.randint(0, classes, (batch,), generator=gs)
        x = templates[y] + noise * torch.randn(batch, channels, size, size, generator=gs)
        return x, y
    return at


def _chains(vocab: int, length: int, batch: int, perm: torch.Tensor,
            gs: torch.Generator, low: int) -> torch.Tensor:
    """Sequences x_{t+1} = perm[x_t] over tokens low..vocab-1 from a random start."""
    seq = torch.empty(batch, length, dtype=torch.long)
    seq[:, 0] = torch.randint(low, vocab, (batch,), generator=gs)
    for t in range(1, length):
        seq[:, t] = perm[seq[:, t - 1]]
    return seq


def _perm(vocab: int, low: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + 7)
    perm = torch.arange(vocab)
    perm[low:] = low + torch.randperm(vocab - low, generator=g)
    return perm


def perm_lm_task(*, vocab: int = 64, length: int = 16, batch: int = 16, low: int = 1,
                 seed: int = 0) -> Batch:
    """Next-token prediction on chains of a fixed random permutation (tokens below ``low`` unused)."""
    perm = _perm(vocab, low, seed)

    def at(step: int) -> tuple[torch.Tensor]:
        return (_chains(vocab, length, batch, perm, _gen(seed, step), low),)
    return at


def token_class_task(*, vocab: int = 64, length: int = 16, batch: int = 16, classes: int = 4,
                     low: int = 1, seed: int = 0) -> Batch:
    """Permutation chains labelled by their first token modulo ``classes`` (a [CLS]-position task)."""
    perm = _perm(vocab, low, seed)

    def at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = _chains(vocab, length, batch, perm, _gen(seed, step), low)
        return seq, seq[:, 0] % classes
    return at


def seq2seq_task(*, vocab: int = 64, length: int = 12, batch: int = 16, low: int = 2,
                 seed: int = 0) -> Batch:
    """Input: a permutation chain; target: the chain continued from the input's last token."""
    perm = _perm(vocab, low, seed)

    def at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        seq = _chains(vocab, 2 * length + 1, batch, perm, _gen(seed, step), low)
        return seq[:, :length].contiguous(), seq[:, length + 1:].contiguous()
    return at


def sequence_task(*, length: int, features: int = 4, batch: int = 32,
                  target: str = "sum", seed: int = 0) -> Batch:
    """Gaussian sequences (batch, length, features) with a binary label.

    ``target="sum"``: the sign of the sum of feature 0 over time (every step matters);
    ``target="first"``: the sign of feature 0 at the first step only (the rest is noise).
    """
    if target not in ("sum", "first"):
        raise ValueError(f"Expected `target` to be 'sum' or 'first', but got {target!r}.")

    def at(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(batch, length, features, generator=_gen(seed, step))
        signal = x[:, :, 0].sum(1) if target == "sum" else x[:, 0, 0]
        return x, (signal > 0).long()
    return at
