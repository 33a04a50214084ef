"""Healthy runs: real architectures (torchvision, timm, Transformers from configs, PyTorch RNNs,
MLPs, CNNs), random init, a standard recipe, learnable synthetic data.

Every label here is "healthy": each setup is a textbook recipe that trains (He et al. 2016 for
ResNets; Howard et al. 2019 MobileNetV3; Tan & Le 2019 EfficientNet; Dosovitskiy et al. 2021 ViT;
Liu et al. 2022 ConvNeXt; Touvron et al. 2021 CaiT/LayerScale; Liu et al. 2021 Swin; Radford et al.
2019 GPT-2; Devlin et al. 2019 BERT; Raffel et al. 2020 T5; Touvron et al. 2023 Llama; Hochreiter &
Schmidhuber 1997 LSTM; Cho et al. 2014 GRU; Ioffe & Szegedy 2015 BN; Glorot & Bengio 2010 Xavier
init for tanh; He et al. 2015 He init for ReLU), and the zoo checks that it does (`checks`).
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

from . import nets, tasks
from .spec import HEALTHY, Label, Run, Setup

__all__ = ["HEALTHY_RUNS", "ce_loss", "hf_loss"]


def ce_loss(model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def hf_loss(model: nn.Module, batch: tuple[Any, ...]) -> torch.Tensor:
    """Transformers' own loss: ``labels`` given (causal LMs shift them inside)."""
    if len(batch) == 1:
        return model(input_ids=batch[0], labels=batch[0]).loss
    return model(input_ids=batch[0], labels=batch[1]).loss


def adamw(model: nn.Module, lr: float = 1e-3) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)


def image(model: nn.Module, *, lr: float = 1e-3, size: int = 32, opt: str = "adamw",
          momentum: float = 0.9, probe: Callable | None = None, after: Callable | None = None,
          **data: Any) -> Setup:
    """A run on `tasks.image_task` with AdamW (weight decay 0.01) or SGD (``opt="sgd"``)."""
    optimizer = (adamw(model, lr) if opt == "adamw"
                 else torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum))
    return Setup(model, optimizer, tasks.image_task(size=size, **data), ce_loss, probe=probe,
                 after=after)


# ----------------------------------------------------------------- torchvision

def _tv(name: str, **kw: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        import torchvision
        return image(torchvision.models.get_model(name, weights=None, num_classes=10, **kw))
    return build


def _tv_vit() -> Setup:
    from torchvision.models import VisionTransformer
    return image(VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4,
                                   hidden_dim=64, mlp_dim=128, num_classes=10))


def _tv_convnext() -> Setup:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt
    blocks = [CNBlockConfig(32, 64, 2), CNBlockConfig(64, None, 2)]
    return image(ConvNeXt(blocks, stochastic_depth_prob=0.0, layer_scale=1e-6, num_classes=10))


# ----------------------------------------------------------------- timm

def _timm(name: str, lr: float = 1e-3, size: int = 32, **kw: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        import timm
        return image(timm.create_model(name, pretrained=False, num_classes=10, **kw), lr=lr,
                     size=size)
    return build


def _timm_mixer() -> Setup:
    from timm.models.mlp_mixer import MlpMixer
    return image(MlpMixer(num_classes=10, img_size=32, patch_size=8, num_blocks=2, embed_dim=64))


_VIT_TINY = dict(img_size=32, patch_size=8, depth=2, embed_dim=64, num_heads=4)

# ----------------------------------------------------------------- transformers


def _hf(kind: str) -> Callable[[], Setup]:
    def build() -> Setup:
        import transformers as tr
        common = dict(vocab_size=64)
        if kind == "gpt2":
            cfg = tr.GPT2Config(n_positions=32, n_embd=64, n_layer=2, n_head=4,
                                tie_word_embeddings=True, **common)
            model, data = tr.GPT2LMHeadModel(cfg), tasks.perm_lm_task()
        elif kind == "llama":
            cfg = tr.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=32, pad_token_id=0, **common)
            model, data = tr.LlamaForCausalLM(cfg), tasks.perm_lm_task()
        elif kind == "bert":
            cfg = tr.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                intermediate_size=128, max_position_embeddings=32, **common)
            cfg.num_labels = 4
            model, data = tr.BertForSequenceClassification(cfg), tasks.token_class_task()
        elif kind == "t5":
            cfg = tr.T5Config(d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                              num_heads=4, decoder_start_token_id=0, pad_token_id=0,
                              **common)
            model, data = tr.T5ForConditionalGeneration(cfg), tasks.seq2seq_task()
        elif kind in _HF_CLASSIFIERS:
            make_cfg, make_model = _HF_CLASSIFIERS[kind]
            cfg = make_cfg(tr, common)
            cfg.num_labels = 4
            model, data = make_model(tr)(cfg), tasks.token_class_task()
        elif kind in _HF_LMS:
            make_cfg, make_model = _HF_LMS[kind]
            model, data = make_model(tr)(make_cfg(tr, common)), tasks.perm_lm_task()
        else:
            cfg = tr.BartConfig(d_model=64, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=4, decoder_attention_heads=4,
                                encoder_ffn_dim=128, decoder_ffn_dim=128,
                                max_position_embeddings=32, pad_token_id=1,
                                decoder_start_token_id=2, forced_eos_token_id=None, **common)
            model, data = tr.BartForConditionalGeneration(cfg), tasks.seq2seq_task()
        return Setup(model, adamw(model, 3e-3), data, hf_loss)
    return build


_HF_CLASSIFIERS: dict[str, tuple[Callable, Callable]] = {  # (config, model class) from configs
    "albert": (lambda tr, c: tr.AlbertConfig(  # one layer's weights shared by all 3 depths
        embedding_size=32, hidden_size=64, num_hidden_layers=3, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=32, **c),
        lambda tr: tr.AlbertForSequenceClassification),
    "distilbert": (lambda tr, c: tr.DistilBertConfig(
        dim=64, n_layers=2, n_heads=4, hidden_dim=128, max_position_embeddings=32, **c),
        lambda tr: tr.DistilBertForSequenceClassification),
    "roberta": (lambda tr, c: tr.RobertaConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=40, pad_token_id=1, **c),
        lambda tr: tr.RobertaForSequenceClassification),
}
_HF_LMS: dict[str, tuple[Callable, Callable]] = {
    "opt": (lambda tr, c: tr.OPTConfig(
        hidden_size=64, num_hidden_layers=2, ffn_dim=128, num_attention_heads=4,
        max_position_embeddings=32, word_embed_proj_dim=64, **c), lambda tr: tr.OPTForCausalLM),
    "gpt_neox": (lambda tr, c: tr.GPTNeoXConfig(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=32, **c), lambda tr: tr.GPTNeoXForCausalLM),
    "mistral": (lambda tr, c: tr.MistralConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, pad_token_id=0, **c),
        lambda tr: tr.MistralForCausalLM),
    "bloom": (lambda tr, c: tr.BloomConfig(hidden_size=64, n_layer=2, n_head=4, **c),
              lambda tr: tr.BloomForCausalLM),
}


# ----------------------------------------------------------------- RNNs, MLPs, CNNs

def _rnn(cell: str, length: int, target: str = "sum", **kw: Any) -> Callable[[], Setup]:
    def build() -> Setup:
        model = nets.RNNClassifier(cell, **kw)
        return Setup(model, torch.optim.Adam(model.parameters(), lr=1e-2),
                     tasks.sequence_task(length=length, target=target), ce_loss,
                     probe=nets.time_ratio)
    return build


def _mlp(act: Callable[[], nn.Module], init: str, depth: int = 3, width: int = 128,
         norm: bool = False, lr: float = 1e-3) -> Callable[[], Setup]:
    def build() -> Setup:
        sizes = [3 * 16 * 16] + [width] * depth + [10]
        model = nets.mlp(sizes, act, init=init)
        if norm:  # BN after every hidden Linear (Ioffe & Szegedy 2015)
            mods = list(model)
            model = nn.Sequential(*[m for lin in mods for m in (
                [lin, nn.BatchNorm1d(lin.out_features)]
                if isinstance(lin, nn.Linear) and lin.out_features == width else [lin])])
        return image(model, lr=lr, size=16, after=nets.act_shares)
    return build


class _ResMLP(nn.Module):
    """Pre-LN residual MLP blocks (x + W2 gelu(W1 LN(x)))."""

    def __init__(self, dim: int = 64, blocks: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(3 * 16 * 16, dim)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim),
                                                  nn.GELU(), nn.Linear(2 * dim, dim))
                                    for _ in range(blocks))
        self.out = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(h)


def _lora_mlp() -> Setup:
    base = nets.mlp([3 * 16 * 16, 128, 128, 10], nn.ReLU, init="he")
    return image(nets.add_lora(base, (nn.Linear,), rank=8), lr=1e-2, size=16)


def _lora_gpt2() -> Setup:
    import transformers as tr
    from transformers.pytorch_utils import Conv1D
    cfg = tr.GPT2Config(vocab_size=64, n_positions=32, n_embd=64, n_layer=2, n_head=4,
                        tie_word_embeddings=True)
    model = nets.add_lora(tr.GPT2LMHeadModel(cfg), (Conv1D,), rank=16)
    model.transformer.wte.weight.requires_grad_(True)  # the tied embedding trains too (PEFT's
    return Setup(model, adamw(model, 1e-2), tasks.perm_lm_task(), hf_loss)  # modules_to_save)


def _gpt2_warmup_cosine() -> Setup:
    import math
    setup = _hf("gpt2")()

    def factor(step: int, warm: int = 10, total: int = 40) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))
    setup.scheduler = torch.optim.lr_scheduler.LambdaLR(setup.optimizer, factor)
    return setup


def _mlp_sched(kind: str, batch: int = 16) -> Callable[[], Setup]:
    def build() -> Setup:
        model = nets.mlp([3 * 16 * 16, 128, 128, 10], nn.ReLU, init="he")
        setup = image(model, lr=0.01, size=16, opt="sgd", batch=batch)
        opt = setup.optimizer
        if kind == "cyclic":  # triangular, 5 steps up, 5 down (Smith 2017)
            setup.scheduler = torch.optim.lr_scheduler.CyclicLR(
                opt, base_lr=1e-3, max_lr=0.05, step_size_up=5)
        elif kind == "onecycle":  # Smith & Topin 2019
            setup.scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05,
                                                                  total_steps=40)
        return setup
    return build


def _h(name: str, family: str, build: Callable[[], Setup], *, quick: bool = False,
       requires: tuple[str, ...] = (), steps: int = 40, note: str = "") -> Run:
    return Run(name, family, Label(HEALTHY), build, ("falls",), steps, quick, requires, note)


HEALTHY_RUNS: tuple[Run, ...] = (
    _h("tv_resnet18", "torchvision", _tv("resnet18"), steps=25, note="resnet18, AdamW 1e-3, 32x32"),
    _h("tv_mobilenet_v3_small", "torchvision", _tv("mobilenet_v3_small"),
       note="BN, hardswish, squeeze-excitation"),
    _h("tv_efficientnet_b0", "torchvision", _tv("efficientnet_b0"), steps=20,
       note="MBConv, SiLU, stochastic depth"),
    _h("tv_shufflenet_v2", "torchvision", _tv("shufflenet_v2_x0_5"), quick=True),
    _h("tv_vit_tiny", "torchvision", _tv_vit, quick=True,
       note="VisionTransformer 32px patch 8, 2 layers, zero-init head"),
    _h("tv_convnext_tiny_cfg", "torchvision", _tv_convnext, quick=True,
       note="ConvNeXt blocks 32/64, layer_scale 1e-6"),
    _h("timm_convnext_atto", "timm", _timm("convnext_atto"), steps=25, requires=("timm",),
       note="ls_init_value 1e-6"),
    _h("timm_vit_layerscale", "timm", _timm("vit_tiny_patch16_224", init_values=1e-5,
                                            **_VIT_TINY), requires=("timm",), quick=True,
       note="ViT with LayerScale init 1e-5"),
    _h("timm_deit_tiny", "timm", _timm("deit_tiny_patch16_224", **_VIT_TINY),
       requires=("timm",)),
    _h("timm_swin_tiny_cfg", "timm", _timm("swin_tiny_patch4_window7_224", img_size=32,
                                           window_size=4, embed_dim=32, depths=(2, 2),
                                           num_heads=(2, 4)), requires=("timm",),
       note="relative position bias tables"),
    _h("timm_resnet10t", "timm", _timm("resnet10t"), requires=("timm",)),
    _h("timm_cait_tiny_cfg", "timm", _timm("cait_xxs24_224", img_size=32, patch_size=8,
                                           depth=2, embed_dim=64, num_heads=4),
       requires=("timm",), note="CaiT: LayerScale 1e-5, class-attention"),
    _h("timm_mixer_tiny_cfg", "timm", _timm_mixer, requires=("timm",)),
    _h("hf_gpt2_tied", "transformers", _hf("gpt2"), requires=("transformers",), quick=True,
       note="GPT-2 2x64, tied lm_head, AdamW 3e-3"),
    _h("hf_llama_tiny", "transformers", _hf("llama"), requires=("transformers",),
       note="Llama 2x64, RMSNorm, GQA, RoPE"),
    _h("hf_bert_cls", "transformers", _hf("bert"), requires=("transformers",),
       note="BERT 2x64 sequence classification"),
    _h("hf_t5_tiny", "transformers", _hf("t5"), requires=("transformers",),
       note="T5 2+2 layers, relative attention bias"),
    _h("hf_albert_shared", "transformers", _hf("albert"), requires=("transformers",),
       quick=True, note="ALBERT: one layer's weights at 3 depths, factorised embedding"),
    _h("hf_distilbert", "transformers", _hf("distilbert"), requires=("transformers",)),
    _h("hf_roberta", "transformers", _hf("roberta"), requires=("transformers",)),
    _h("hf_opt", "transformers", _hf("opt"), requires=("transformers",), note="tied lm_head"),
    _h("hf_gpt_neox", "transformers", _hf("gpt_neox"), requires=("transformers",),
       note="parallel attention + MLP, rotary"),
    _h("hf_mistral", "transformers", _hf("mistral"), requires=("transformers",)),
    _h("hf_bloom", "transformers", _hf("bloom"), requires=("transformers",),
       note="ALiBi, tied lm_head"),
    _h("hf_bart", "transformers", _hf("bart"), requires=("transformers",),
       note="encoder-decoder, shared embeddings"),
    _h("timm_test_nfnet", "timm", _timm("test_nfnet", size=64), requires=("timm",),
       note="normaliser-free ResNet: scaled WS, skipinit gain, squeeze-excitation"),
    _h("timm_test_byobnet", "timm", _timm("test_byobnet", size=64), requires=("timm",)),
    _h("timm_test_efficientnet_gn", "timm", _timm("test_efficientnet_gn", size=64),
       requires=("timm",), note="GroupNorm EfficientNet"),
    _h("timm_test_mambaout", "timm", _timm("test_mambaout", size=64), requires=("timm",),
       note="gated CNN blocks"),
    _h("timm_test_vit2", "timm", _timm("test_vit2", size=64, img_size=64), requires=("timm",)),
    _h("tv_googlenet", "torchvision", _tv("googlenet", aux_logits=False, init_weights=True),
       note="Inception branches concatenated"),
    _h("tv_densenet121", "torchvision", _tv("densenet121"), steps=25,
       note="dense concatenation"),
    _h("rnn_lstm_sum", "rnn", _rnn("LSTM", 20), quick=True, note="sign of a sum over 20 steps"),
    _h("rnn_gru_first_short", "rnn", _rnn("GRU", 8, "first"), note="label at step 0 of 8"),
    _h("rnn_tanh_sum", "rnn", _rnn("RNN", 10), quick=True),
    _h("rnn_bilstm_2layer", "rnn", _rnn("LSTM", 20, num_layers=2, bidirectional=True)),
    _h("mlp_relu_he", "mlp", _mlp(nn.ReLU, "he"), quick=True),
    _h("mlp_tanh_xavier", "mlp", _mlp(nn.Tanh, "xavier"), quick=True),
    _h("mlp_sigmoid_bn_deep", "mlp", _mlp(nn.Sigmoid, "xavier", depth=6, width=64, norm=True),
       note="6 sigmoid layers with BN"),
    _h("mlp_residual_ln", "mlp", lambda: image(_ResMLP(), size=16), quick=True),
    _h("cnn_bn_small", "cnn", lambda: image(nets.small_cnn()), quick=True),
    # adapters, schedules and noise (the new rules' healthy counterparts)
    _h("lora_b_zero_mlp", "mlp", _lora_mlp,
       note="frozen MLP, LoRA rank 8 standard init (B = 0: A's gradient 0 at step 0 only)"),
    _h("lora_gpt2_standard", "transformers", _lora_gpt2, requires=("transformers",),
       note="frozen GPT-2 2x64, LoRA rank 16 on every Conv1D, tied embedding trained"),
    _h("resmlp_zero_last_layerscale", "mlp",
       lambda: image(nets.ZeroBranchResMLP(gamma0=1e-5), size=16),
       note="zero-init-last branches with LayerScale 1e-5 (the branch gets a gradient)"),
    _h("gpt2_warmup_cosine", "transformers", _gpt2_warmup_cosine, requires=("transformers",),
       note="GPT-2 2x64, linear warm-up 10 steps then cosine"),
    _h("mlp_cyclic_lr_triangular", "mlp", _mlp_sched("cyclic"),
       note="SGD momentum, CyclicLR 1e-3..0.05, 5 steps up"),
    _h("mlp_onecycle", "mlp", _mlp_sched("onecycle"), note="SGD momentum, OneCycleLR 0.05"),
    _h("mlp_sgd_batch2", "mlp", _mlp_sched("none", batch=2),
       note="batch of 2: a noisy minibatch loss"),
)
