"""Architectures the zoo does not have, trained as a user would: is the default watch quiet?

Run ``python benchmarks/sweep.py [--steps 40] [--only NAME ...] [--out sweep.json]`` (1 torch
thread; timm, torchvision and Transformers models built from their configs with random weights,
under ``GradWatch(model, optimizer=opt)``, passing the loss with ``note_loss``). Image models
train on the zoo's learnable image task (`benchmarks.zoo.tasks.image_task`: class templates plus
noise, a fresh batch of 16 at 64 px per step; a model that only builds at its own input size
gets that size) with AdamW (lr 1e-3); Transformers causal LMs (2 layers, width 64, vocabulary
64, from ``AutoConfig.for_model``) on the zoo's permutation-chain language
(`benchmarks.zoo.tasks.perm_lm_task`) and sequence classifiers on its token task
(`token_class_task`), with their own loss and AdamW (lr 3e-3), the zoo's recipe for them. Per model it prints the loss (mean of the first and last five steps), whether
it trained (the zoo's healthy check: the loss fell by at least 25%), the relative error of the
last recorded total norm against a float64 plain-torch norm of the same gradients, and what
gradwatch said (findings, layers flagged). For a ``dead_units`` finding it also measures, with
plain torch, the share of each named layer's units that never fire on 8 fresh batches, so the
table says whether the units it names are dead.

The list was written before any verdict was read. One rule changed on what it found (ConvBERT's
false `vanishing`: the trend now reads the input side's largest norm), so ConvBERT is tuning
evidence; the README's "Architectures outside the zoo" reports the run after that change.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.zoo.tasks import image_task  # noqa: E402
from benchmarks._cli import out_file, positive_int  # noqa: E402
from gradwatch import GradWatch  # noqa: E402

__all__ = ["MODELS", "build", "train_one", "never_firing", "main"]

TIMM = ("test_byobnet", "test_coatnet", "test_convnext", "test_convnext2", "test_convnext3",
        "test_efficientnet", "test_efficientnet_evos", "test_efficientnet_ln", "test_maxvit",
        "test_resnet", "test_vit", "test_vit3", "test_vit4", "test_vit_relpos",
        "mobilenetv3_small_050", "ghostnet_050", "regnetx_002", "lcnet_050", "efficientvit_b0",
        "mobilevitv2_050", "repghostnet_050", "dla46_c", "levit_128s", "edgenext_xx_small",
        "rexnet_100", "gernet_s", "mixnet_s", "hgnetv2_b0", "starnet_s050", "repvit_m0_9",
        "fastvit_t8", "poolformerv2_s12")
TORCHVISION = ("mobilenet_v3_small", "mobilenet_v3_large", "regnet_y_400mf", "regnet_x_400mf",
               "efficientnet_b0", "shufflenet_v2_x0_5", "squeezenet1_1", "mnasnet0_5",
               "mobilenet_v2", "resnext50_32x4d", "googlenet")
CAUSAL_LMS = ("qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "mpt",
              "stablelm", "starcoder2", "olmo", "olmo2", "cohere", "mixtral", "qwen2_moe",
              "granite", "xglm", "biogpt", "persimmon", "mamba", "rwkv", "gpt_bigcode",
              "nemotron", "helium", "glm")
CLASSIFIERS = ("electra", "deberta", "deberta-v2", "xlm-roberta", "mpnet", "convbert",
               "mobilebert", "ernie", "big_bird", "nystromformer", "fnet", "megatron-bert",
               "data2vec-text", "canine")
MODELS = (tuple(("timm", n) for n in TIMM) + tuple(("torchvision", n) for n in TORCHVISION)
          + tuple(("transformers", n) for n in CAUSAL_LMS + CLASSIFIERS))
"""(library, model name): none of them is in the zoo (`benchmarks.zoo.models`)."""

HF_SMALL = dict(vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=128, max_position_embeddings=64, num_key_value_heads=2,
                head_dim=16, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                num_experts=8, num_local_experts=8, moe_intermediate_size=32,
                shared_expert_intermediate_size=64)
"""The Transformers config: 2 layers of width 64 (a key a model does not know is ignored)."""


def build(library: str, name: str) -> nn.Module:
    """The model with random weights (seed 0): 10 classes for images, 4 for sequences."""
    torch.manual_seed(0)
    if library == "transformers":
        import transformers as tr
        cfg = tr.AutoConfig.for_model(name, **HF_SMALL)
        if name in CLASSIFIERS:
            cfg.num_labels = 4
            return tr.AutoModelForSequenceClassification.from_config(cfg)
        return tr.AutoModelForCausalLM.from_config(cfg)
    if library == "timm":
        import timm
        return timm.create_model(name, pretrained=False, num_classes=10)
    import torchvision
    kw = {"init_weights": True, "aux_logits": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, num_classes=10, **kw)


def _size(model: nn.Module) -> int:
    """64 px, or the model's own input size when it only runs at that size."""
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64))
        return 64
    except Exception:  # a fixed-size patch embedding, a relative-position table
        cfg = getattr(model, "pretrained_cfg", {}) or {}
        return int(cfg.get("test_input_size", cfg.get("input_size", (3, 224, 224)))[-1])
    finally:
        model.train()


def _logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


@torch.no_grad()
def never_firing(model: nn.Module, names: list[str], batches: list[torch.Tensor]) -> dict[str, float]:
    """Per named layer: the share of its output units (channels of a conv, features of a linear)
    whose output is ≤ 0 at every position of every sample of ``batches`` (what a ReLU after it
    turns into a unit that never fires), with plain forward hooks."""
    modules = dict(model.named_modules())
    tops: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def on(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
            dim = 1 if isinstance(mod, nn.modules.conv._ConvNd) else out.dim() - 1
            top = out.transpose(0, dim).reshape(out.shape[dim], -1).amax(1)
            tops[name] = top if name not in tops else torch.maximum(tops[name], top)
        return on

    handles = [modules[n].register_forward_hook(hook(n)) for n in names if n in modules]
    try:
        for x in batches:
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {n: float((t <= 0).double().mean()) for n, t in tops.items()}


def _task(library: str, name: str, model: nn.Module) -> tuple[Callable[[int], tuple], int, float,
                                                               Callable[..., torch.Tensor]]:
    """(batches by step, input size, learning rate, loss of a batch) for ``model``."""
    if library != "transformers":
        size = _size(model)
        return (image_task(size=size, batch=16), size, 1e-3,
                lambda x, y: F.cross_entropy(_logits(model(x)), y))
    from benchmarks.zoo.tasks import perm_lm_task, token_class_task
    if name in CLASSIFIERS:
        return token_class_task(), 0, 3e-3, lambda x, y: model(input_ids=x, labels=y).loss
    return (perm_lm_task(), 0, 3e-3,
            lambda x, y=None: model(input_ids=x, labels=x).loss)


def train_one(library: str, name: str, steps: int) -> dict[str, Any]:
    """One model's run and what gradwatch said about it."""
    start = time.perf_counter()
    model = build(library, name)
    task, size, lr, loss_of = _task(library, name, model)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    watch = GradWatch(model, optimizer=opt)
    losses: list[float] = []
    ref = math.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(steps):
            opt.zero_grad()
            loss = loss_of(*task(step))
            loss.backward()
            if step == steps - 1:  # plain torch: the float64 norm of the same gradients
                ref = torch.linalg.vector_norm(torch.stack([
                    torch.linalg.vector_norm(p.grad, dtype=torch.float64)
                    for p in model.parameters() if p.grad is not None])).item()
            watch.note_loss(loss)
            opt.step()
            losses.append(loss.item())
    watch.close()
    last = watch.history[-1]
    findings, notes = watch.diagnose(), watch.notes()
    flagged = sorted({n for r in watch.history for n in r.flagged})
    dead_named = [n for f in findings + notes if f.kind == "dead_units" for n in f.layers]
    fresh = [task(10_000 + i)[0] for i in range(8)]
    first, final = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    return {"library": library, "name": name, "size": size, "steps": steps,
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "loss_first": first, "loss_last": final, "trained": final <= 0.75 * first,
            "total_norm_rel_err": abs(last.total_norm - ref) / ref if last.step == steps - 1
            else None,
            "findings": [{"kind": f.kind, "layers": list(f.layers), "first_step": f.first_step,
                          "evidence": f.evidence} for f in findings],
            "notes": [{"kind": f.kind, "layers": list(f.layers), "first_step": f.first_step,
                       "evidence": f.evidence, "note": f.note} for f in notes],
            "flagged": flagged,
            "never_firing": never_firing(model.train(), dead_named, fresh) if dead_named else {},
            "warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught
                                if not issubclass(w.category, (DeprecationWarning,
                                                               FutureWarning))}),
            "wall_s": time.perf_counter() - start}


def _said(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"error: {r['error']}"
    notes = [f"note: {f['kind']} ({', '.join(f['layers'][:3])}"
             f"{' …' if len(f['layers']) > 3 else ''}; step {f['first_step']})"
             for f in r.get("notes", ())]
    if not r["findings"] and not r["flagged"]:
        return "; ".join(["nothing"] + notes)
    parts = [f"{f['kind']} ({', '.join(f['layers'][:3])}{' …' if len(f['layers']) > 3 else ''};"
             f" step {f['first_step']})" for f in r["findings"]]
    return "; ".join(parts + notes) + f"; {len(r['flagged'])} layer(s) flagged"


def markdown(results: list[dict[str, Any]]) -> str:
    lines = ["| model | px | params (M) | loss first → last 5 | trained | total-norm rel. err. "
             "| gradwatch said | named layers' units never firing on 8 fresh batches |",
             "|---|---:|---:|---|---|---:|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['library']} `{r['name']}` | | | | | | {_said(r)} | |")
            continue
        err = r["total_norm_rel_err"]
        dead = ", ".join(f"{n} {100 * v:.0f}%" for n, v in r["never_firing"].items())
        lines.append(f"| {r['library']} `{r['name']}` | {r['size'] or '–'} | {r['params_m']:.2f} | "
                     f"{r['loss_first']:.2f} → {r['loss_last']:.2f} | "
                     f"{'yes' if r['trained'] else 'no'} | "
                     f"{'–' if err is None else f'{err:.1e}'} | {_said(r)} | {dead or '–'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="training steps per model (default 40)")
    p.add_argument("--only", nargs="+", default=(), metavar="NAME", help="just these models")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", default=None, type=out_file, help="write every result to this JSON file")
    args = p.parse_args(argv)
    if args.steps < 5:
        p.error(f"--steps must be at least 5 (the loss is compared over 5 steps), got {args.steps}")
    torch.set_num_threads(args.threads)
    chosen = [m for m in MODELS if not args.only or m[1] in args.only]
    unknown = sorted(set(args.only) - {n for _, n in MODELS})
    if unknown:
        p.error(f"--only: unknown model(s) {unknown}; choose from {[n for _, n in MODELS]}")
    results, start = [], time.perf_counter()
    for i, (library, name) in enumerate(chosen, 1):
        print(f"[{i}/{len(chosen)}] {library} {name} ...", end=" ", flush=True, file=sys.stderr)
        try:
            r = train_one(library, name, args.steps)
        except ImportError as e:
            r = {"library": library, "name": name, "error": f"needs {e.name}"}
        except Exception as e:  # a model that does not build or run here: said, not hidden
            r = {"library": library, "name": name, "error": f"{type(e).__name__}: {e}"[:200]}
        results.append(r)
        print(f"{r.get('wall_s', 0):.1f}s {_said(r)}", file=sys.stderr, flush=True)
    ran = [r for r in results if "error" not in r]
    trained = [r for r in ran if r["trained"]]
    quiet = [r for r in trained if not r["findings"] and not r["flagged"]]
    print(markdown(results))
    print(f"\n{len(ran)} of {len(results)} ran; {len(trained)} trained (loss fell ≥ 25%), of "
          f"which {len(quiet)} got no finding and no flagged layer; "
          f"{torch.get_num_threads()} thread(s), {args.steps} steps, wall "
          f"{time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"steps": args.steps, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "results": results}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
