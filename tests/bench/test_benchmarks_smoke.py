"""The overhead benchmark runs end to end in its smallest mode and writes the JSON it promises.

No timing is asserted: on a tiny model and two rounds the numbers are noise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "overhead.py"
CONFIGS = {"bare", "gw_param", "gw_param_act", "gw_param_act_every10", "torch_clip", "gw_clip",
           "naive_item", "floor_norms", "floor_hooks", "detect_anomaly"}


def test_overhead_benchmark_smoke(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| tiny | gw_param |" in proc.stdout  # the Markdown table is printed

    result = json.loads(out.read_text())
    meta = result["meta"]
    assert meta["threads"] >= 1 and meta["wall_seconds"] > 0 and meta["mode"] == "smoke"

    tiny = result["models"]["tiny"]
    assert set(tiny["configs"]) == CONFIGS
    assert tiny["param_tensors"] == 6 and tiny["layers"] == 3 and tiny["rounds"] >= 1
    for name, cfg in tiny["configs"].items():
        assert cfg["ms_per_step"]["median"] > 0, name
        assert cfg["ratio"]["median"] > 0, name
        assert cfg["peak_step_mb"] >= 0, name
    assert tiny["configs"]["bare"]["ratio"]["median"] == 1.0
    assert tiny["python_heap_bytes_per_record"] > 0
    assert {t["target"].split(" (")[0].split(":")[0] for t in tiny["targets"]} >= {
        "param + activation norms every step", "every=10", "NaN localisation"}
    for t in tiny["targets"]:
        assert isinstance(t["met"], bool) and not math.isnan(t["value"])

    rows = result["scaling"]["rows"]
    assert [r["param_tensors"] for r in rows] == [20, 40]
    for r in rows:
        for key in ("bare_ms", "gradwatch_step_us", "gradwatch_step_unrecorded_us",
                    "clip_grad_norm__us", "naive_item_us", "gradwatch_step_us_per_tensor"):
            assert r[key] > 0, key
    assert set(result["scaling"]["fit_us"]) >= {"gradwatch_step", "clip_grad_norm_"}

    nan = result["nan_check"]
    assert nan["gradwatch_correct"] is True
    assert nan["gradwatch_first_nonfinite"] == nan["injected_at_output_of"]
    assert "nan" in nan["detect_anomaly_error"].lower()
    assert result["markdown"].startswith("torch ")


def test_sweep_counts_units_that_never_fire_with_plain_torch():
    sys.path.insert(0, str(SCRIPT.parents[1]))
    import torch
    from torch import nn

    from benchmarks.sweep import never_firing

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Conv2d(2, 5, 1), nn.ReLU())
    with torch.no_grad():  # 3 of 8 features and 2 of 5 channels can never be positive
        model[0].weight.zero_()
        model[0].bias.copy_(torch.tensor([-1.0, -2.0, -3.0, 1, 1, 1, 1, 1]))
        model[2].weight.zero_()
        model[2].bias.copy_(torch.tensor([-1.0, 1, -1.0, 1, 1]))
    linear = never_firing(model[:2], ["0"], [torch.randn(6, 4) for _ in range(3)])
    conv = never_firing(model[2:], ["2"], [torch.randn(3, 2, 4, 4)])  # (a slice keeps names)
    assert linear == {"0": 3 / 8}
    assert conv == {"2": 2 / 5}


def test_sweep_runs_one_model_and_checks_the_norm_against_torch(tmp_path):
    out = tmp_path / "sweep.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "sweep.py"), "--only",
                           "shufflenet_v2_x0_5", "--steps", "6", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| torchvision `shufflenet_v2_x0_5` |" in proc.stdout
    (r,) = json.loads(out.read_text())["results"]
    assert "error" not in r, r
    assert r["steps"] == 6 and r["size"] == 64 and r["total_norm_rel_err"] < 1e-5
    assert math.isfinite(r["loss_first"]) and math.isfinite(r["loss_last"])


def test_scaling_benchmark_smoke(tmp_path):
    """The scaling benchmark runs end to end on two tiny depths and writes every configuration
    (no timing is asserted: only that each figure is there and finite), and the history's
    memory per layer-record, measured, is within the 48 bytes its columns are sized for."""
    out = tmp_path / "scaling.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "scaling.py"), "--depths", "2,3",
                           "--budget", "0", "--no-transformer", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(out.read_text())["results"]
    assert list(results) == ["L = 2", "L = 3"]
    for per_depth in results.values():
        assert set(per_depth) == {"bare", "naive", "foreach", "gw_params", "gw_default",
                                  "gw_every10", "gw_unrecorded"}
        assert all(math.isfinite(v["median"]) and v["n"] >= 5 for v in per_depth.values())
    assert "| gw_default |" in proc.stdout


def test_history_memory_per_layer_record_is_small_and_flat():
    """The history's columns: at most 48 bytes per layer per record (its own accounting and the
    allocations tracemalloc sees), and no growth once it is full."""
    sys.path.insert(0, str(SCRIPT.parent))
    import scaling

    mem = scaling.history_memory(depth=50, records=200)
    assert mem["columns_bytes_per_layer_record"] <= 48
    assert mem["measured_bytes_per_layer_record"] <= 48
    flat = scaling.flat_memory(1500, depth=10, history=100)
    assert max(flat["rss_mb"][2:]) - min(flat["rss_mb"][2:]) < 2.0  # MB, after the ring filled


def test_scaling_benchmark_measures_garbage_collection(tmp_path):
    """``--gc`` runs each configuration alone and writes its collector figures; the objects
    promoted per step are counted (no timing is asserted)."""
    out = tmp_path / "gc.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "scaling.py"), "--depths", "",
                           "--no-transformer", "--gc", "--gc-steps", "20", "--gc-depth", "30",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    collection = json.loads(out.read_text())["gc"]
    assert list(collection) == ["bare", "gw_params", "gw_default", "gw_every10"]
    for figures in collection.values():
        assert figures["layers"] == 30 and figures["steps"] == 20
        assert figures["step_ms"] > 0 and figures["promoted_per_step"] >= 0
        assert 0 <= figures["full_us"] <= figures["collector_us"]
    assert "| gw_default |" in proc.stdout


def test_schedule_tail_benchmark_smoke():
    """The last 60 steps of a million-step cosine schedule: a still streak long enough to be
    a note (the weights moved before), never a finding."""
    script = SCRIPT.parent / "schedule_tail.py"
    proc = subprocess.run([sys.executable, str(script), "--totals", "1000000", "--optimizers",
                           "adam", "--tail", "60"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = next(line for line in proc.stdout.splitlines() if line.startswith("| adam"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    measured = int(cells[2].split(" / ")[0])
    assert measured >= 8 and cells[3] == "-" and cells[4] == "not_moving", row


def test_hook_floor_benchmark_smoke():
    """It runs and gives a number per configuration (values are timings: not asserted)."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("hook_floor", SCRIPT.parent / "hook_floor.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    extra = module.measure(3, rounds=2, per_round=2)
    assert set(extra) == set(module.CONFIGS) and extra["bare"] == 0.0
