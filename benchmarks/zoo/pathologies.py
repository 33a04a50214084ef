"""Pathological runs: each breaks one thing the literature says breaks training, with its label.

Labels (kind, and for NaN/Inf the parameter-owning module where it is born) were written from the
construction and the cited source before any gradwatch verdict was read; `checks` measure, in plain
torch, that each run really fails the way its label says.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import nets, tasks
from .models import adamw, ce_loss, hf_loss, image
from .spec import Label, Run, Setup

__all__ = ["PATHOLOGICAL_RUNS"]

IMG = 3 * 16 * 16


def _mlp_run(sizes: list[int], act: Callable[[], nn.Module], *, lr: float = 0.1, opt: str = "sgd",
             default_head: bool = False, **init: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        model = nets.mlp(sizes, act, **init)
        if default_head:  # only the hidden layers get the run's init
            model[-1].reset_parameters()
        return image(model, lr=lr, size=16, opt=opt, after=nets.act_shares)
    return build


def _rnn_run(cell: str, length: int, target: str, *, scale: float | None = None,
             lr: float = 1e-2, **kw: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        model = nets.RNNClassifier(cell, **kw)
        if scale is not None:  # recurrent matrix scaled to spectral radius `scale`
            with torch.no_grad():
                w = model.rnn.weight_hh_l0
                w.mul_(scale / torch.linalg.eigvals(w).abs().max())
        return Setup(model, torch.optim.Adam(model.parameters(), lr=lr),
                     tasks.sequence_task(length=length, target=target), ce_loss,
                     probe=nets.time_ratio)
    return build


def _softmax_by_hand(m: nn.Module, batch: tuple[Any, ...], t: float) -> torch.Tensor:
    ids = batch[0]
    p = torch.softmax(m(input_ids=ids).logits[:, :-1] / t, dim=-1)
    return -torch.log(p.gather(-1, ids[:, 1:, None])).mean()  # log(0) when p underflows


def _every_label_ignored(m: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    ids = batch[0]  # a prompt mask that masks every token: a mean over no label
    return m(input_ids=ids, labels=torch.full_like(ids, -100)).loss


def _gpt2(lr: float = 3e-3, *, temperature: float | None = None,
          bad_act: bool = False, ignore_all: bool = False) -> Callable[[], Setup]:
    def build() -> Setup:
        import transformers as tr
        cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                            tie_word_embeddings=True)
        model = tr.GPT2LMHeadModel(cfg)
        if bad_act:
            model.transformer.h[1].mlp.act = nets.BadBackward()
        loss: Callable[[nn.Module, tuple[Any, ...]], torch.Tensor] = hf_loss
        if temperature is not None:
            loss = functools.partial(_softmax_by_hand, t=temperature)
        if ignore_all:
            loss = _every_label_ignored
        return Setup(model, adamw(model, lr), tasks.perm_lm_task(), loss)
    return build


def _llama_rmsnorm_eps0() -> Setup:
    import transformers as tr
    cfg = tr.LlamaConfig(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         pad_token_id=0, rms_norm_eps=0.0)
    model = tr.LlamaForCausalLM(cfg)
    data = tasks.perm_lm_task(low=1)

    def padded(step: int) -> tuple[torch.Tensor]:
        ids = data(step)[0].clone()
        ids[:, 0] = 0  # a left pad token: its embedding row is zero (padding_idx)
        return (ids,)
    return Setup(model, adamw(model, 3e-3), padded, hf_loss)


def _resnet_overflow() -> Setup:
    import torchvision
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    with torch.no_grad():  # a corrupted layer (as after a bad checkpoint merge): fp32 overflow
        model.layer2[0].conv1.weight.mul_(1e38)
    return image(model)


def _between(front: list[nn.Module], bad: nn.Module, back: list[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Flatten(), *front, bad, *back)


def _fwd_log() -> Setup:
    model = _between([nn.Linear(IMG, 64), nn.ReLU()], nets.LogFeatures(64, 64),
                     [nn.Linear(64, 10)])
    return image(model, size=16)


def _fwd_exp() -> Setup:
    # log_gain initialised with the intended gain (100) instead of its log: exp(100) = inf in fp32
    model = _between([nn.Linear(IMG, 64), nn.ReLU()], nets.LogGain(64, 100.0),
                     [nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10)])
    return image(model, size=16)


def _bwd_ste() -> Setup:
    model = _between([nn.Linear(IMG, 64), nn.ReLU()], nets.STELinear(64, 64),
                     [nn.ReLU(), nn.Linear(64, 10)])
    return image(model, size=16)


def _loss_bce() -> Setup:
    model = nets.mlp([IMG, 64, 1], nn.ReLU, init="he")
    with torch.no_grad():
        model[-1].weight.mul_(300.0)  # logits of several hundred: sigmoid is exactly 0 or 1

    def loss(m: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        x, y = batch
        p = torch.sigmoid(m(x)).squeeze(1)
        t = (y % 2).to(p.dtype)
        return -(t * torch.log(p) + (1 - t) * torch.log(1 - p)).mean()  # hand-written BCE
    return Setup(model, adamw(model), tasks.image_task(size=16), loss)


def _stall_mse() -> Setup:
    # one-hot targets through sigmoid outputs with squared error; output bias +20: every output
    # is 1.0 in fp32, wrong on 9 of 10 classes, and its slope y(1-y) is exactly 0
    model = nets.mlp([IMG, 64, 64, 10], nn.Tanh, init="xavier")
    with torch.no_grad():
        model[-1].bias.fill_(20.0)

    def loss(m: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(torch.sigmoid(m(x)), F.one_hot(y, 10).float())
    return Setup(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
                 tasks.image_task(size=16), loss)


def _stall_bceloss() -> Setup:
    # nn.BCELoss on probabilities (clamps log at -100) with an output bias of +50: every
    # probability is 1.0, the 0-labels cost 100 each and no gradient flows back
    model = nets.mlp([IMG, 64, 1], nn.ReLU, init="he")
    with torch.no_grad():
        model[-1].bias.fill_(50.0)

    def loss(m: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
        x, y = batch
        return nn.functional.binary_cross_entropy(torch.sigmoid(m(x)).squeeze(1),
                                                  (y % 2).float())
    return Setup(model, adamw(model), tasks.image_task(size=16), loss)


def _amp_fp16() -> Setup:
    model = nets.mlp([IMG, 256, 256, 10], nn.ReLU, init="he")
    # init_scale 2**24 and growth every step: fp16 gradients overflow, the scale halves, grows back
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=1)
    setup = image(model, size=16)
    setup.scaler, setup.amp_dtype = scaler, torch.float16
    return setup


def _lora_mlp_zero() -> Setup:
    base = nets.mlp([IMG, 128, 128, 10], nn.ReLU, init="he")
    model = nets.add_lora(base, (nn.Linear,), rank=8, zero_a=True)  # A and B both at 0
    return image(model, lr=1e-2, size=16, probe=nets.zero_grads(ce_loss),
                 after=nets.zero_grads(ce_loss, "after_"))


def _lora_gpt2_zero() -> Setup:
    import transformers as tr
    from transformers.pytorch_utils import Conv1D
    cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                        tie_word_embeddings=True)
    model = nets.add_lora(tr.GPT2LMHeadModel(cfg), (Conv1D,), rank=4, zero_a=True)
    return Setup(model, adamw(model, 1e-2), tasks.perm_lm_task(), hf_loss,
                 probe=nets.zero_grads(hf_loss), after=nets.zero_grads(hf_loss, "after_"))


def _double_zero_branch() -> Setup:
    model = nets.ZeroBranchResMLP(gamma0=0.0)  # LayerScale 0 (meant 1e-5) and zero-init-last
    return image(model, size=16, probe=nets.zero_grads(ce_loss), after=nets.zero_grads(ce_loss, "after_"))


def _no_zero_grad(model: nn.Module, lr: float) -> Setup:
    setup = image(model, lr=lr, size=16, opt="sgd")
    setup.zero_grad = False  # gradients accumulate over every step, momentum on top
    return setup


def _maximize() -> Setup:
    model = nets.mlp([IMG, 128, 128, 10], nn.Tanh, init="xavier")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, maximize=True)  # ascends the loss
    return Setup(model, opt, tasks.image_task(size=16), ce_loss)


def _resnet18_sigmoid_nobn() -> Setup:
    import torchvision
    model = torchvision.models.resnet18(weights=None, num_classes=10, norm_layer=nn.Identity)
    for m in list(model.modules()):
        for name, child in list(m.named_children()):
            if isinstance(child, nn.ReLU):
                setattr(m, name, nn.Sigmoid())
    return image(model, lr=0.01, opt="sgd")


def _p(name: str, family: str, label: Label, build: Callable[[], Setup], checks: tuple[str, ...],
       *, steps: int = 40, quick: bool = False, requires: tuple[str, ...] = (),
       note: str = "") -> Run:
    return Run(name, family, label, build, checks, steps, quick, requires, note)


GLOROT = "Glorot & Bengio 2010 (AISTATS), sect. 4: saturation and vanishing in deep sigmoid/tanh nets"
PASCANU = "Pascanu, Mikolov & Bengio 2013 (ICML): exploding gradients, norm growth across steps/layers"
BENGIO94 = "Bengio, Simard & Frasconi 1994; Hochreiter & Schmidhuber 1997: vanishing through time"
NAN_FWD = "Goodfellow et al. 2016 (Deep Learning, 4.1): overflow/underflow, log(0), division by 0"
MICIKEVICIUS = "Micikevicius et al. 2018 (ICLR), Mixed precision training: loss-scale overflow"

ZERO_FACTORS = ("Hu et al. 2022 (LoRA): B = 0 at init, A random; with both 0 the gradient of "
                "each factor is the other's value times the rest, so 0 forever")
NO_ZERO_GRAD = ("PyTorch docs, torch.optim (zero_grad before each backward; .grad "
                "accumulates); Sutskever et al. 2013 (momentum amplifies a growing step)")

TRANS = ("transformers",)
TV = ("torchvision",)

PATHOLOGICAL_RUNS: tuple[Run, ...] = (
    # vanishing across depth
    _p("vanish_sigmoid_deep", "mlp", Label("vanishing", cite=GLOROT),
       _mlp_run([IMG] + [64] * 20 + [10], nn.Sigmoid, std=0.05), ("no_fall", "depth_vanish"),
       quick=True, note="20 sigmoid layers, N(0, 0.05^2) init, SGD 0.1"),
    _p("vanish_tanh_smallinit_deep", "mlp", Label("vanishing", cite=GLOROT + "; LeCun et al. 1998"),
       _mlp_run([IMG] + [64] * 30 + [10], nn.Tanh, gain=0.5), ("no_fall", "depth_vanish"),
       note="30 tanh layers, gain 0.5 (x0.5 per layer)"),
    # exploding
    _p("explode_linear_deep", "mlp", Label("exploding", cite=PASCANU + "; seed 001 W=2I chain"),
       _mlp_run([IMG] + [64] * 30 + [10], nn.Identity, gain=2.0, lr=1e-3),
       ("huge_or_nan", "grad_huge", "depth_explode"), quick=True, note="30 linear layers, gain 2 per layer"),
    _p("explode_relu_deep_largeinit", "mlp", Label("exploding", cite=PASCANU + "; He et al. 2015"),
       _mlp_run([IMG] + [64] * 20 + [10], nn.ReLU, gain=2.0 * 2 ** 0.5, lr=1e-3),
       ("huge_or_nan", "grad_huge", "depth_explode"), note="20 ReLU layers, 2x He std"),
    _p("explode_rnn_largeweights", "rnn", Label("exploding", cite=PASCANU),
       _rnn_run("RNN", 30, "sum", scale=3.0, nonlinearity="relu"), ("grad_huge", "huge_or_nan"),
       note="ReLU RNN, recurrent spectral radius 3, 30 steps"),
    # divergence / learning rate too high
    _p("diverge_gpt2_lr1", "transformers", Label("divergence", cite="Wortsman et al. 2024 (ICLR), "
       "small-scale proxies for large-scale instabilities: lr sensitivity"), _gpt2(lr=1.0),
       ("rises", "no_fall", "grad_grows"), requires=TRANS, quick=True, note="tiny GPT-2, AdamW lr=1"),
    _p("diverge_cnn_sgd_lr", "cnn", Label("divergence", cite="LeCun et al. 1998 (Efficient "
       "BackProp): lr above 2/lambda_max diverges"),
       lambda: image(nets.small_cnn(), lr=5.0, opt="sgd"), ("rises", "no_fall"),
       note="BN CNN, SGD lr=5 momentum 0.9"),
    # dead units
    _p("dead_relu_negbias", "mlp", Label("dead_units", cite="Lu et al. 2020 (CiCP), Dying ReLU "
       "and initialization"), _mlp_run([IMG, 128, 128, 128, 10], nn.ReLU, init="he", bias=-10.0),
       ("no_fall", "dead"), quick=True, note="He init, every bias -10"),
    _p("dead_relu_deep_narrow", "mlp", Label("dead_units", cite="Lu et al. 2020 (CiCP), Dying "
       "ReLU and initialization: deep narrow ReLU nets are born dead"),
       _mlp_run([IMG] + [3] * 40 + [10], nn.ReLU, init="he"), ("no_fall", "dead"),
       note="40 ReLU layers of width 3, He init"),
    # saturation
    _p("saturate_tanh_bias", "mlp", Label("saturation", cite=GLOROT + "; LeCun et al. 1998 "
       "(Efficient BackProp, 4.4-4.6)"),
       _mlp_run([IMG] + [128] * 4 + [10], nn.Tanh, init="xavier", bias=5.0, lr=0.01,
                default_head=True), ("no_fall", "saturated"), quick=True,
       note="4 tanh layers, every hidden bias +5"),
    _p("saturate_sigmoid_bias", "mlp", Label("saturation", cite=GLOROT),
       _mlp_run([IMG] + [128] * 4 + [10], nn.Sigmoid, init="xavier", bias=10.0, lr=0.01,
                default_head=True), ("no_fall", "saturated"),
       note="4 sigmoid layers, every hidden bias +10"),
    # vanishing through time
    _p("vtt_lstm_long", "rnn", Label("vanishing_through_time", cite=BENGIO94),
       _rnn_run("LSTM", 100, "first"), ("no_fall", "time_vanish"), steps=30, quick=True,
       note="LSTM, 100 steps, label = sign at step 0"),
    _p("vtt_rnn_tanh_long", "rnn", Label("vanishing_through_time", cite=BENGIO94),
       _rnn_run("RNN", 60, "first"), ("no_fall", "time_vanish"), note="tanh RNN, 60 steps"),
    # non-finite born in the forward pass
    _p("nan_fwd_resnet_overflow", "torchvision",
       Label("nonfinite_forward", birth="layer2.0.conv1", cite=NAN_FWD), _resnet_overflow,
       ("nonfinite",), steps=4, requires=TV, note="resnet18, layer2.0.conv1 weights x1e38"),
    _p("nan_fwd_llama_rmsnorm_eps0", "transformers",
       Label("nonfinite_forward", birth="model.layers.0.input_layernorm", cite=NAN_FWD +
             "; Zhang & Sennrich 2019 RMSNorm (eps guards 0/0)"), _llama_rmsnorm_eps0,
       ("nonfinite",), steps=4, requires=TRANS, quick=True, note="rms_norm_eps=0, a pad token"),
    _p("nan_fwd_log_zero", "mlp", Label("nonfinite_forward", birth="3", cite=NAN_FWD), _fwd_log,
       ("nonfinite",), steps=4, quick=True, note="log(relu(Wx+b)) layer mid-network"),
    _p("nan_fwd_exp_overflow", "mlp", Label("nonfinite_forward", birth="3", cite=NAN_FWD),
       _fwd_exp, ("nonfinite",), steps=4, note="x*exp(log_gain), log_gain=100"),
    # non-finite born in the backward pass
    _p("nan_bwd_custom_clamp", "mlp", Label("nonfinite_backward", birth="3", cite="PyTorch docs, "
       "Extending autograd (gradcheck your backward); Goodfellow et al. 2016, 4.1"), _bwd_ste,
       ("nonfinite", "finite_forward"), steps=4, quick=True, note="custom clamp, backward /0"),
    _p("nan_bwd_gpt2_custom_gelu", "transformers",
       Label("nonfinite_backward", birth="transformer.h.1.mlp.act",
             cite="PyTorch docs, Extending autograd"), _gpt2(bad_act=True),
       ("nonfinite", "finite_forward"), steps=4, requires=TRANS,
       note="block 1 GELU with a NaN backward (its input comes from c_fc); the birth is the "
            "GELU module itself since parameter-free modules are located (was c_fc, the "
            "parameter-owning module before it)"),
    # non-finite born in the loss
    _p("nan_loss_bce_saturated", "mlp", Label("nonfinite_loss", birth="loss", head="3",
       cite="PyTorch docs BCELoss (clamps log at -100 for this reason); Goodfellow et al. 4.1"),
       _loss_bce, ("nonfinite", "finite_forward"), steps=4, quick=True,
       note="hand-written BCE, sigmoid saturated to exactly 0/1"),
    _p("nan_loss_gpt2_softmax_temp", "transformers",
       Label("nonfinite_loss", birth="loss", head="transformer.ln_f",
             cite="Goodfellow et al. 2016, 4.1 (log-softmax must be computed stably)"),
       _gpt2(temperature=1e-3), ("nonfinite", "finite_forward"), steps=4, requires=TRANS,
       note="log(softmax(logits/1e-3)) by hand"),
    _p("nan_loss_gpt2_all_ignored", "transformers",
       Label("nonfinite_loss", birth="loss", cite="PyTorch docs CrossEntropyLoss (ignore_index: "
             "the mean is over non-ignored targets; none left is 0/0)"),
       _gpt2(ignore_all=True), ("nonfinite", "finite_grads"), steps=6, requires=TRANS,
       note="every label -100: loss NaN, gradients exactly 0"),
    # stalled: no gradient while the loss is high
    _p("stall_sigmoid_mse_saturated", "mlp", Label("stalled", cite="Rumelhart, Hinton & "
       "Williams 1986 (flat spots); Glorot & Bengio 2010 sect. 4 (saturated top layer); "
       "Nielsen 2015 ch. 3 (squared error on saturated sigmoid outputs learns slowly)"),
       _stall_mse, ("no_fall", "grad_tiny"), steps=12, quick=True,
       note="sigmoid outputs + MSE, output bias +20"),
    _p("stall_bceloss_clamped", "mlp", Label("stalled", cite="PyTorch docs BCELoss (log clamped "
       "at -100); Goodfellow et al. 2016, 6.2.2.2 (saturating sigmoid with a non-log loss)"),
       _stall_bceloss, ("no_fall", "grad_tiny"), steps=12, quick=True,
       note="nn.BCELoss on sigmoid, output bias +50"),
    # zero gradient: every gradient of some layers exactly 0 while gradient enters the model
    _p("lora_both_zero_mlp", "mlp", Label("zero_gradient", cite=ZERO_FACTORS),
       _lora_mlp_zero, ("no_fall", "grad_tiny", "some_zero"),
       note="frozen MLP, LoRA rank 8 on every Linear, A and B both zero-initialised"),
    _p("zero_lora_gpt2", "transformers", Label("zero_gradient", cite=ZERO_FACTORS),
       _lora_gpt2_zero, ("no_fall", "grad_tiny", "some_zero"), requires=TRANS,
       note="frozen GPT-2 2x64, LoRA rank 4 on every Conv1D, A and B both zero"),
    _p("double_zero_residual_branch", "mlp", Label("zero_gradient", cite=ZERO_FACTORS +
       "; Goyal et al. 2017 (zero-init last) with LayerScale (Touvron et al. 2021) at 0"),
       _double_zero_branch, ("some_zero",),
       note="pre-LN residual MLP, branch last layer zero-init and LayerScale 0: branches dead"),
    # the loss climbs while the gradients stay moderate
    _p("sgd_momentum_no_zero_grad", "mlp", Label("loss_rising", cite=NO_ZERO_GRAD),
       lambda: _no_zero_grad(nets.mlp([IMG, 128, 128, 10], nn.ReLU, init="he"), 3e-3),
       ("rises", "ends_above_start"), note="ReLU MLP, SGD 3e-3 momentum 0.9, no zero_grad()"),
    _p("forgot_zero_grad_cnn", "cnn", Label("loss_rising", cite=NO_ZERO_GRAD),
       lambda: _no_zero_grad(nets.small_cnn(), 0.01), ("rises", "ends_above_start"),
       note="BN CNN, SGD 0.01 momentum 0.9, no zero_grad()"),
    _p("adam_maximize_by_mistake", "mlp", Label("loss_rising", cite="Goodfellow et al. 2016, "
       "4.3 (a step along the gradient increases the loss); torch.optim.Adam(maximize=True)"),
       _maximize, ("rises", "ends_above_start"), note="tanh MLP, Adam 1e-3 with maximize=True"),
    # vanishing behind skip paths: the activation after each residual sum, no normalisation
    _p("vanish_resnet18_sigmoid_nobn", "torchvision", Label("vanishing", cite=GLOROT +
       "; He et al. 2016 (ResNets are trained with BN and ReLU)"), _resnet18_sigmoid_nobn,
       ("no_fall", "depth_vanish"), steps=25, requires=TV,
       note="resnet18, sigmoid for every ReLU, no batch norm, SGD 0.01"),
    _p("vanish_resmlp_postact_sigmoid", "mlp", Label("vanishing", cite=GLOROT +
       "; He et al. 2016b (Identity mappings: an activation after the sum blocks the skip)"),
       lambda: image(nets.PostActResMLP(nn.Sigmoid), lr=0.1, size=16, opt="sgd"),
       ("no_fall", "depth_vanish"), note="8 post-activation sigmoid residual blocks, no norm"),
    # AMP overflow
    _p("amp_fp16_scale_thrash", "mlp", Label("amp_overflow", cite=MICIKEVICIUS), _amp_fp16,
       ("amp_skips",), quick=True, note="CPU fp16 autocast, GradScaler 2^24, growth every step"),
)
