"""gradwatch against the tools it replaces: one training step's cost, side by side in one run.

Run ``python benchmarks/peers.py [--quick] [--threads N] [--out peers.json]``. Every
configuration trains its own copy of a model (same seed, same batch, plain SGD) and adds its
monitoring to the bare step: gradwatch (parameter norms; with output-gradient norms; recorded
every 10th step; with clipping), the loop people write by hand
(``[p.grad.norm().item() for p in model.parameters()]``), Lightning's
``grad_norm(model, norm_type=2)``, ``wandb.watch(model, log="gradients", log_freq=1)`` in
offline mode, and ``torch.nn.utils.clip_grad_norm_``. Steps are interleaved (A B C ..., in an
order shuffled per slot, `_measure.interleave`) after warm-up steps; a round gives each
configuration 10 consecutive steps. Reported: the median over rounds of each configuration's
time divided by the bare step's time in the same round, with the interquartile range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn
from torch.nn import functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import interleave, paired_ratios, summarise  # noqa: E402
from _workloads import Workload, make_workload  # noqa: E402
from _cli import name_list, out_file, positive_int  # noqa: E402

from gradwatch import GradWatch  # noqa: E402

__all__ = ["PEERS", "peer_workload", "make_peer_step", "open_wandb_run", "run_models",
           "markdown"]

PEERS = {
    "bare": "training step, no monitoring",
    "gw_param": "GradWatch(model, optimizer=opt, activations=False)",
    "gw_loss": "GradWatch(model, optimizer=opt, activations=False) and watch.note_loss(loss) "
               "each step",
    "gw_act": "GradWatch(model, optimizer=opt): + output-gradient norms",
    "gw_every10": "GradWatch(model, optimizer=opt, every=10)",
    "naive": "[p.grad.norm().item() for p in model.parameters()]",
    "lightning": "lightning.pytorch.utilities.grad_norm(model, norm_type=2)",
    "wandb_watch": "wandb.watch(model, log='gradients', log_freq=1), offline, one "
                   "wandb.log({}) per step to commit the histograms",
    "gw_wandb": "GradWatch(model, optimizer=opt, loggers=[WandbLogger(...)]): every record to "
                "its own offline wandb run",
    "torch_clip": "torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)",
    "gw_clip": "GradWatch(model, optimizer=opt, activations=False, clip=1.0)",
}

HEADERS = {"gw_param": "gradwatch params", "gw_loss": "params + `note_loss`",
           "gw_act": "+ activations", "gw_every10": "every=10",
           "naive": "naive `.item()` loop", "lightning": "Lightning `grad_norm`",
           "wandb_watch": "`wandb.watch`", "gw_wandb": "gradwatch + `WandbLogger`",
           "torch_clip": "`clip_grad_norm_`",
           "gw_clip": "gradwatch clip=1.0"}

PRESETS = {
    # budget: seconds of timed rounds per model, after which rounds stop once min_rounds are in
    "default": dict(models="mlp,resnet18,transformer", warmup=3, min_rounds=6, max_rounds=400,
                    budget={"mlp": 60.0, "resnet18": 200.0, "transformer": 200.0}),
    "quick": dict(models="mlp", warmup=2, min_rounds=2, max_rounds=2, budget={}),
}


class _Encoder(nn.Module):
    """Token embedding, ``nn.TransformerEncoder`` (4 layers, d=256, 8 heads, ff 1024), a head."""

    def __init__(self, vocab: int = 1000, d_model: int = 256, layers: int = 4) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead=8, dim_feedforward=4 * d_model,
                                           dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(tokens))).flatten(0, 1)


def _seeded(make: Callable[[], nn.Module]) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return make()

    return build


def peer_workload(name: str) -> Workload:
    """The models of the peer table: ``mlp``, ``resnet18`` (32x32) or ``transformer``."""
    g = torch.Generator().manual_seed(7)
    if name == "mlp":
        return make_workload("mlp")  # the seeds' sigmoid MLP 784-256-(10x256)-10, batch 32
    if name == "resnet18":
        import torchvision

        return Workload("resnet18", "torchvision resnet18, batch 32 x 3x32x32",
                        _seeded(torchvision.models.resnet18),
                        (torch.randn(32, 3, 32, 32, generator=g),
                         torch.randint(0, 1000, (32,), generator=g)), F.cross_entropy)
    if name == "transformer":
        return Workload("transformer", "TransformerEncoder 4 x 256 (8 heads), 8 x 64 tokens",
                        _seeded(_Encoder), (torch.randint(0, 1000, (8, 64), generator=g),
                                            torch.randint(0, 1000, (8 * 64,), generator=g)),
                        F.cross_entropy)
    if name == "tiny":
        return make_workload("tiny")
    raise ValueError(f"Expected a model in mlp, resnet18, transformer, tiny, but got {name!r}.")


@dataclass
class PeerStep:
    """One configuration's training step on its own model copy, and what to undo at the end."""

    step: Callable[[], None]
    close: Callable[[], None]


def make_peer_step(config: str, workload: Workload, *, device: str = "cpu",
                   wandb_run: Any = None) -> PeerStep:
    """A fresh model copy on ``device`` with SGD, the monitoring of ``config``, and its step."""
    model = workload.build().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = (t.to(device) for t in workload.inputs)
    loss_fn = workload.loss
    after: Callable[[], object] | None = None
    commit: Callable[[], object] | None = None
    note: Callable[[torch.Tensor], object] | None = None
    close: Callable[[], None] = lambda: None  # noqa: E731
    options = {"gw_param": dict(activations=False), "gw_act": {}, "gw_every10": dict(every=10),
               "gw_clip": dict(activations=False, clip=1.0)}
    if config in options:
        close = GradWatch(model, optimizer=opt, **options[config]).close
    elif config == "gw_loss":
        watch = GradWatch(model, optimizer=opt, activations=False)
        note, close = watch.note_loss, watch.close
    elif config == "naive":
        def after():
            return [p.grad.norm().item() for p in model.parameters()]
    elif config == "lightning":
        from lightning.pytorch.utilities import grad_norm

        def after():
            return grad_norm(model, norm_type=2)
    elif config == "torch_clip":
        def after():
            return torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    elif config == "gw_wandb":
        from gradwatch.integrations.wandb import WandbLogger

        logger = WandbLogger(**_wandb_init_kwargs(), reinit="create_new")
        close = GradWatch(model, optimizer=opt, activations=False, loggers=[logger]).close
    elif config == "wandb_watch":
        if wandb_run is None:
            raise ValueError("Expected `wandb_run` for config 'wandb_watch', but got None; "
                             "fix by passing open_wandb_run()[0].")
        wandb_run.watch(model, log="gradients", log_freq=1)
        commit = lambda: wandb_run.log({})  # noqa: E731
        close = lambda: wandb_run.unwatch(model)  # noqa: E731
    elif config != "bare":
        raise ValueError(f"Expected a config in {list(PEERS)}, but got {config!r}.")

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        if note is not None:
            note(loss)
        if after is not None:
            after()
        opt.step()
        if commit is not None:
            commit()

    return PeerStep(step, close)


_WANDB_DIR: list[str] = []  # the temporary folder of this process's offline runs


def _wandb_init_kwargs() -> dict[str, Any]:
    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    if not _WANDB_DIR:
        _WANDB_DIR.append(tempfile.mkdtemp(prefix="gradwatch-peers-wandb-"))
    return dict(mode="offline", dir=_WANDB_DIR[0], project="gradwatch-peers",
                settings=wandb.Settings(console="off", x_disable_stats=True))


def open_wandb_run() -> tuple[Any, Callable[[], None]]:
    """An offline wandb run in a temporary folder and a function that finishes it and removes
    the folder (with the runs of `WandbLogger` configurations)."""
    import wandb

    run = wandb.init(**_wandb_init_kwargs())

    def finish() -> None:
        run.finish()
        shutil.rmtree(_WANDB_DIR.pop(), ignore_errors=True)

    return run, finish


def available(configs: list[str]) -> tuple[list[str], dict[str, str]]:
    """The configs whose library is installed, and why the others were left out."""
    missing = {}
    for config, module in (("lightning", "lightning"), ("wandb_watch", "wandb"),
                           ("gw_wandb", "wandb")):
        if config in configs:
            try:
                __import__(module)
            except ImportError as err:
                missing[config] = f"not installed ({err})"
    return [c for c in configs if c not in missing], missing


def run_models(models: list[str], configs: list[str], opts: dict, *, device: str = "cpu",
               group: Callable[[Callable[[], None]], Callable[[], None]] | None = None,
               block: int = 10, steps_per_call: int = 1,
               probe: Callable[[Callable[[], None]], dict[str, Any]] | None = None
               ) -> dict[str, Any]:
    """Times every configuration on every model.

    Args:
        group: Wraps a step into the timed call (on a GPU: 10 steps, then one synchronise).
        block: Timed calls per configuration per round.
        steps_per_call: Training steps in one timed call (what ``group`` makes of a step).
        probe: Called with each configuration's step after timing; its dict is stored as
            ``"probe"`` (on a GPU: the host synchronisations per step).
    """
    configs, missing = available(configs)
    wants_wandb = {"wandb_watch", "gw_wandb"} & set(configs)
    run, finish = open_wandb_run() if wants_wandb else (None, lambda: None)
    out: dict[str, Any] = {"left_out": missing, "models": {}}
    try:
        for name in models:
            workload = peer_workload(name)
            steps = {c: make_peer_step(c, workload, device=device, wandb_run=run)
                     for c in configs}
            for c in [c for c in ("lightning", "wandb_watch", "gw_wandb") if c in steps]:
                try:  # a peer that fails on this device or model is left out, with the error
                    steps[c].step()
                except Exception as err:  # noqa: BLE001 - reported in the output
                    out["left_out"][f"{c} ({name})"] = f"failed: {err!r}"[:300]
                    steps.pop(c).close()
            fns = {c: (group(s.step) if group else s.step) for c, s in steps.items()}
            load0, t0 = os.getloadavg()[0], time.perf_counter()
            samples = interleave(fns, block=block, warmup=opts["warmup"],
                                 min_rounds=opts["min_rounds"], max_rounds=opts["max_rounds"],
                                 budget_s=opts["budget"].get(name, 0.0))
            probes = {c: probe(s.step) for c, s in steps.items()} if probe else {}
            for s in steps.values():
                s.close()
            ratios = paired_ratios(samples, "bare")
            print(f"{name}: {len(samples['bare'])} rounds in {time.perf_counter() - t0:.0f} s",
                  file=sys.stderr, flush=True)
            out["models"][name] = {
                "description": workload.description, "rounds": len(samples["bare"]),
                "steps_per_round": block * steps_per_call,
                "timing_seconds": time.perf_counter() - t0,
                "load_average_1min": [load0, os.getloadavg()[0]],
                "configs": {c: {"what": PEERS[c],
                                "ms": {k: (v * 1e3 / steps_per_call if k != "n" else v)
                                       for k, v in summarise(samples[c]).items()},
                                "ratio": summarise(ratios[c]), **(
                                    {"probe": probes[c]} if c in probes else {})}
                            for c in steps}}
    finally:
        finish()
    return out


def markdown(result: dict[str, Any]) -> str:
    """The method line and the table: one row per model, one column per configuration."""
    meta = result["meta"]
    lines = [f"{meta['method']}", ""]
    configs = [c for c in PEERS if c != "bare" and any(
        c in m["configs"] for m in result["models"].values())]
    lines.append("| model (bare step) | " + " | ".join(HEADERS[c] for c in configs) + " |")
    lines.append("|---|" + "---:|" * len(configs))
    for m in result["models"].values():
        bare = m["configs"]["bare"]["ms"]["median"]
        cells = []
        for c in configs:
            r = m["configs"].get(c, {}).get("ratio")
            cells.append("–" if r is None else
                         f"{r['median']:.3f} [{r['p25']:.3f}–{r['p75']:.3f}]")
        lines.append(f"| {m['description']} ({bare:.3g} ms; {m['rounds']} rounds, load "
                     f"{m['load_average_1min'][0]:.1f}–{m['load_average_1min'][1]:.1f}) | "
                     + " | ".join(cells) + " |")
    for c, why in result.get("left_out", {}).items():
        lines.append(f"\n`{c}` left out: {why}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: the MLP, 2 rounds")
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="torch intra-op threads (1)")
    parser.add_argument("--models", type=name_list(),
                        help="comma-separated subset of mlp,resnet18,transformer")
    parser.add_argument("--out", type=out_file, default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                      "results", "peers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    opts = PRESETS["quick" if args.quick else "default"]
    models = args.models or opts["models"].split(",")
    start, load = time.perf_counter(), os.getloadavg()
    result = run_models(models, list(PEERS), opts)
    result["meta"] = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
        "mode": "quick" if args.quick else "default",
        "wall_seconds": time.perf_counter() - start,
        "load_average_start": list(load), "load_average_end": list(os.getloadavg()),
        "method": (f"CPU, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs; "
                   f"each configuration on its own model copy; steps interleaved one by one in "
                   f"an order shuffled per slot, {opts['warmup']} warm-up steps each, rounds of "
                   f"10 steps per configuration; cells: median over rounds of (time / bare time "
                   f"in the same round) [interquartile range]; 1-min load average "
                   f"{load[0]:.1f} at start, {os.getloadavg()[0]:.1f} at end"),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
    print(markdown(result))
    print(f"\nwrote {args.out} ({result['meta']['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
