"""Before/after: this tree's gradwatch against an earlier commit's, side by side in one run.

Run ``python benchmarks/versions.py --ref 3915e21 [--models mlp,resnet18,transformer]
[--budget 30] [--threads 1] [--out versions.json]``. The earlier commit's ``gradwatch/`` is
extracted with ``git archive`` into a temporary folder as the package ``gradwatch_before`` (its
imports are relative), so both versions train their own copies of the same model in the same
process, interleaved step by step (`_measure.interleave`). The table gives the median over
rounds of each configuration's time divided by the bare step's in the same round, with its
interquartile range, for parameter norms only, parameter + activation statistics, and
``every=10`` (all with ``optimizer=``, the default statistics of each version).
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _measure import interleave, paired_ratios, summarise  # noqa: E402
from _workloads import make_workload  # noqa: E402
from _cli import name_list, out_file, positive_int, seconds  # noqa: E402

CONFIGS = {"param": dict(activations=False), "act": {}, "every10": dict(every=10)}
BUDGET = {"mlp": 1.0, "resnet18": 3.0, "transformer": 2.0, "tiny": 0.2}  # chain<L>: 1.0  # x --budget


def load_before(ref: str) -> object:
    """The package ``gradwatch/`` of commit ``ref``, imported as ``gradwatch_before``."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True,
                          text=True, check=True).stdout.strip()
    blob = subprocess.run(["git", "archive", ref, "gradwatch"], cwd=root, capture_output=True,
                          check=True).stdout
    folder = tempfile.mkdtemp(prefix="gradwatch-before-")
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(folder, filter="data")
    os.rename(os.path.join(folder, "gradwatch"), os.path.join(folder, "gradwatch_before"))
    sys.path.insert(0, folder)
    return importlib.import_module("gradwatch_before")


def arm(package: object, config: str | None, workload: object):
    model = workload.build()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    watch = None if config is None else package.GradWatch(model, optimizer=opt,
                                                           **CONFIGS[config])
    x, y = workload.inputs

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        workload.loss(model(x), y).backward()
        opt.step()

    return step, watch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", default="3915e21", help="the earlier commit (default %(default)s)")
    parser.add_argument("--models", default="mlp,resnet18,transformer", type=name_list(chains=True))
    parser.add_argument("--budget", type=seconds, default=30.0,
                        help="seconds of timing per model, scaled per model (default %(default)s)")
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--out", default="versions.json", type=out_file)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import gradwatch

    before = load_before(args.ref)
    results = {"ref": args.ref, "threads": args.threads, "load": os.getloadavg(), "models": {}}
    for name in args.models:
        workload = make_workload(name)
        fns, watches = {}, []
        fns["bare"], _ = arm(gradwatch, None, workload)
        for config in CONFIGS:
            for label, package in (("before", before), ("after", gradwatch)):
                fns[f"{label}:{config}"], watch = arm(package, config, workload)
                watches.append(watch)
        samples = interleave(fns, block=10, warmup=5, min_rounds=5, max_rounds=400,
                             budget_s=args.budget * BUDGET.get(name, 1.0))
        ratios = paired_ratios(samples, "bare")
        results["models"][name] = {k: summarise(v) for k, v in ratios.items()}
        results["models"][name]["bare_ms"] = summarise([t * 1e3 for t in samples["bare"]])
        for watch in watches:
            watch.close()
    results["load_after"] = os.getloadavg()
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
    print(f"before = {args.ref}, after = this tree; {args.threads} torch thread(s); load average "
          f"{results['load'][0]:.1f} -> {results['load_after'][0]:.1f}")
    print("| model (bare step) | config | before | after |")
    print("|---|---|---|---|")
    for name, r in results["models"].items():
        for config in CONFIGS:
            b, a = r[f"before:{config}"], r[f"after:{config}"]
            cell = lambda s: f"{s['median']:.3f} ({s['p25']:.3f}–{s['p75']:.3f})"  # noqa: E731
            print(f"| {name} ({r['bare_ms']['median']:.1f} ms) | {config} | {cell(b)} | "
                  f"{cell(a)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
