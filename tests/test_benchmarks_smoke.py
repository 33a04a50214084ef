"""The overhead benchmark runs end to end in its smallest mode and writes the JSON it promises.

No timing is asserted: on a tiny model and two rounds the numbers are noise.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "overhead.py"
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
