"""Runs of the bugs that crash nothing (labels written from the construction before any
verdict was read): part of the model cut off the loss, gradients never zeroed, and weights the
optimizer never moves; with the healthy counterparts a user meets (a frozen encoder, a backbone
frozen by a learning rate of 0 beside a head that trains).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from . import nets
from .models import ce_loss, image
from .spec import HEALTHY, Label, Run, Setup

__all__ = ["SILENT_RUNS"]

IMG = 3 * 16 * 16
CUT = ("PyTorch docs, Autograd mechanics (detach, no_grad, .data and integer tensors do not "
       "carry gradients); a frozen part must be left out of the optimizer or set "
       "requires_grad=False")
NO_ZERO = ("PyTorch docs, torch.optim (zero_grad before each backward; .grad accumulates); "
           "Sutskever et al. 2013 (momentum)")
STILL = ("PyTorch docs, torch.optim (every update is scaled by the learning rate; LambdaLR "
         "multiplies the initial one by the function's value)")


class CutEncoder(nn.Module):
    """An encoder and a head; ``how`` cuts the encoder's output off the graph (``detach``,
    ``no_grad``, ``int`` cast, ``data``) or not (``""``)."""

    def __init__(self, encoder: nn.Module, head: nn.Module, how: str) -> None:
        super().__init__()
        self.encoder, self.head, self.how = encoder, head, how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.how == "no_grad":
            with torch.no_grad():
                h = self.encoder(x)
        else:
            h = self.encoder(x)
        if self.how == "detach":
            h = h.detach()
        elif self.how == "int":
            h = (h * 8).long().float() / 8  # a quantisation by integer cast
        elif self.how == "data":
            h = h.data
        return self.head(h)


def _mlp_encoder() -> nn.Module:
    return nets.mlp([IMG, 128, 64], nn.ReLU, init="he")


def _cnn_encoder() -> nn.Module:
    return nn.Sequential(*list(nets.small_cnn())[:-1])  # everything but the linear head


def _cut(encoder: Any, width: int, how: str, *, lr: float = 1e-3, frozen: bool = False,
         outside: bool = False) -> Setup:
    model = CutEncoder(encoder(), nn.Sequential(nn.Linear(width, 64), nn.ReLU(),
                                                nn.Linear(64, 10)), how)
    if frozen:  # frozen on purpose: not trained, and not in the optimizer
        model.encoder.requires_grad_(False)
    setup = image(model, lr=lr, size=16, probe=nets.zero_grads(ce_loss),
                  after=nets.zero_grads(ce_loss, "after_"))
    if frozen or outside:  # (outside: left out of the optimizer but still requiring grad, so
        # its gradients are computed, never zeroed by the optimizer, and never stepped)
        setup.optimizer = torch.optim.AdamW(model.head.parameters(), lr=lr)
    return setup


def _no_zero_grad(model: nn.Module, opt: str, lr: float) -> Setup:
    setup = image(model, lr=lr, size=16, opt=opt)
    setup.zero_grad = False
    return setup


def _still(how: str) -> Setup:
    """A ReLU MLP whose optimizer moves no weight: AdamW at lr 0 (``lr0``), or SGD whose
    LambdaLR factor is ``step // 1000`` (0 for the whole run: ``intdiv``)."""
    model = nets.mlp([IMG, 128, 128, 10], nn.ReLU, init="he")
    setup = image(model, lr=0.0 if how == "lr0" else 1e-2, size=16,
                  opt="adamw" if how == "lr0" else "sgd",
                  probe=nets.weight_sum(), after=nets.weight_sum("after_"))
    if how == "intdiv":
        torch.optim.lr_scheduler.LambdaLR(setup.optimizer, lambda step: step // 1000)
    return setup


def _lr0_backbone() -> Setup:
    """The same MLP with its first two layers frozen by a param group at lr 0, the head
    trained at 1e-3 (AdamW)."""
    model = nets.mlp([IMG, 128, 128, 10], nn.ReLU, init="he")
    setup = image(model, size=16)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    setup.optimizer = torch.optim.AdamW(
        [{"params": [p for m in layers[:2] for p in m.parameters()], "lr": 0.0},
         {"params": list(layers[2].parameters())}], lr=1e-3)
    return setup


def _p(name: str, family: str, label: Label, build: Any, checks: tuple[str, ...],
       note: str) -> Run:
    return Run(name, family, label, build, checks, 40, False, (), note)


def _cut_run(name: str, family: str, how: str, note: str) -> Run:
    encoder = _cnn_encoder if family == "cnn" else _mlp_encoder
    return _p(name, family, Label("no_gradient", cite=CUT),
              lambda: _cut(encoder, 64, how), ("some_zero",), note=note)


SILENT_RUNS: tuple[Run, ...] = (
    _cut_run("detached_cnn_encoder", "cnn", "detach",
             "BN CNN encoder, its features .detach()ed before a 2-layer head, AdamW"),
    _cut_run("nograd_mlp_encoder", "mlp", "no_grad",
             "MLP encoder run under torch.no_grad(), head trained, AdamW"),
    _cut_run("intcast_mlp_features", "mlp", "int",
             "MLP encoder features quantised by .long() before the head"),
    _cut_run("data_cnn_features", "cnn", "data", "BN CNN encoder features read through .data"),
    _cut_run("nograd_cnn_encoder", "cnn", "no_grad",
             "BN CNN encoder run under torch.no_grad(), head trained, AdamW"),
    _cut_run("intcast_cnn_features", "cnn", "int",
             "BN CNN encoder features quantised by .long() before the head"),
    _p("sgd_momentum_accumulating_mlp", "mlp", Label("not_zeroed", cite=NO_ZERO),
       lambda: _no_zero_grad(nets.mlp([IMG, 128, 128, 10], nn.ReLU, init="he"), "sgd", 3e-3),
       ("grad_grows",), note="ReLU MLP, SGD 3e-3 momentum 0.9, no zero_grad()"),
    _p("sgd_no_zero_grad_cnn", "cnn", Label("not_zeroed", cite=NO_ZERO),
       lambda: _no_zero_grad(nets.small_cnn(), "sgd", 1e-3), ("grad_grows",),
       note="BN CNN, SGD 1e-3 momentum 0.9, no zero_grad()"),
    _p("adamw_lr0_mlp", "mlp", Label("not_moving", cite=STILL), lambda: _still("lr0"),
       ("unmoved",), note="ReLU MLP, AdamW at lr 0"),
    _p("lambdalr_intdiv_mlp", "mlp", Label("not_moving", cite=STILL),
       lambda: _still("intdiv"), ("unmoved",),
       note="ReLU MLP, SGD 1e-2 with LambdaLR(lambda step: step // 1000): a factor of 0"),
    # healthy counterparts
    _p("lr0_backbone_mlp", "mlp", Label(HEALTHY), _lr0_backbone, ("falls",),
       note="the same MLP, its first two layers frozen by a param group at lr 0, head AdamW"),
    _p("frozen_cnn_encoder", "cnn", Label(HEALTHY),
       lambda: _cut(_cnn_encoder, 64, "", lr=1e-2, frozen=True), ("falls",),
       note="BN CNN encoder frozen (requires_grad False, not in the optimizer), head trained"),
    _p("outside_optimizer_mlp_encoder", "mlp", Label(HEALTHY),
       lambda: _cut(_mlp_encoder, 64, "", lr=1e-2, outside=True), ("falls",),
       note="MLP encoder left out of the optimizer (still requiring grad: its gradients grow, "
            "never zeroed, never stepped), head trained"),
    _p("trained_mlp_encoder", "mlp", Label(HEALTHY),
       lambda: _cut(_mlp_encoder, 64, ""), ("falls",),
       note="the same MLP encoder and head, nothing cut"),
)
