"""The benchmark scripts and the zoo refuse bad flags with a usage error (exit 2, one line naming
the flag) before measuring anything, instead of a traceback minutes later."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.zoo import run as zoo

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_bench_cli_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _usage_error(main, argv, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().split("\n")
    assert stop.value.code == 2 and "error: " in err[-1], err
    return err[-1]


@pytest.fixture
def afile(tmp_path) -> Path:
    path = tmp_path / "afile"
    path.write_text("x")
    return path


CASES = [
    ("overhead", ["--threads", "0"], "--threads"), ("overhead", ["--threads", "-3"], "--threads"),
    ("overhead", ["--models", "nope"], "--models"), ("overhead", ["--budget", "-1"], "--budget"),
    ("overhead", ["--deep-sizes", "0,10"], "--deep-sizes"),
    ("scaling", ["--depths", "0"], "--depths"), ("scaling", ["--threads", "0"], "--threads"),
    ("scaling", ["--budget", "-1"], "--budget"), ("scaling", ["--gc-steps", "0"], "--gc-steps"),
    ("scaling", ["--long", "0"], "--long"), ("scaling", ["--gc-depth", "x"], "--gc-depth"),
    ("versions", ["--threads", "0"], "--threads"),
    ("versions", ["--models", "mlp,nope"], "--models"),
    ("versions", ["--budget", "nan"], "--budget"), ("ablation", ["--budget", "-2"], "--budget"),
    ("gpu", ["--models", "nope", "--device", "cpu"], "--models"),
    ("gpu", ["--budget", "0", "--device", "cpu"], "--budget"),
    ("peers", ["--models", "nope"], "--models"), ("peers", ["--threads", "0"], "--threads"),
    ("sweep", ["--threads", "0"], "--threads"),
    ("hook_floor", ["0"], "depths"), ("hook_floor", ["abc"], "depths"),
]


@pytest.mark.parametrize("script, argv, flag", CASES)
def test_bad_numbers_and_names_are_usage_errors(script, argv, flag, capsys):
    line = _usage_error(_script(script).main, argv, capsys)
    assert f"error: argument {flag}: " in line, line
    value = argv[argv.index(flag) + 1] if flag in argv else argv[0]
    assert repr(value) in line or repr(value.split(",")[-1]) in line, line


@pytest.mark.parametrize("script", ["overhead", "scaling", "versions", "peers", "sweep", "gpu"])
def test_out_naming_a_folder_or_a_path_under_a_file_is_a_usage_error(script, tmp_path, afile,
                                                                      capsys):
    extra = ["--device", "cpu"] if script == "gpu" else []
    for out in (tmp_path, afile / "x.json"):
        line = _usage_error(_script(script).main, ["--out", str(out), *extra], capsys)
        assert "argument --out" in line and str(out) in line, line


def test_a_script_error_has_no_traceback(afile):
    proc = subprocess.run([sys.executable, str(BENCH / "overhead.py"), "--smoke", "--models",
                           "nope", "--out", str(afile.parent / "o.json")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().split("\n")[-1].startswith("overhead.py: error: argument --models")


# ----------------------------------------------------------------------------- the zoo
def test_zoo_threads_and_unknown_names_are_usage_errors(capsys):
    assert "--threads" in _usage_error(zoo.main, ["--threads", "0", "--list"], capsys)
    line = _usage_error(zoo.main, ["--only", "nope", "mlp_relu_he", "--list"], capsys)
    assert "--only" in line and "'nope'" in line and "--list" in line and len(line) < 300


def test_zoo_out_naming_a_file_is_a_usage_error(afile, capsys, monkeypatch):
    monkeypatch.setattr(zoo, "run_one", lambda run: pytest.fail("a run started"))
    for out in (afile, afile / "sub"):
        line = _usage_error(zoo.main, ["--only", "mlp_relu_he", "--out", str(out)], capsys)
        assert "--out" in line and str(out) in line and "a file" in line


def test_zoo_refuses_to_replace_an_earlier_run_without_force(tmp_path, capsys, monkeypatch):
    earlier = tmp_path / "zoo.jsonl"
    earlier.write_text(json.dumps({"name": "a"}) + "\n" + json.dumps({"name": "b"}) + "\n")
    monkeypatch.setattr(zoo, "run_one", lambda run: pytest.fail("a run started"))
    line = _usage_error(zoo.main, ["--only", "mlp_relu_he", "--out", str(tmp_path)], capsys)
    assert "2 runs" in line and "--force" in line and str(earlier) in line
    assert earlier.read_text().count("\n") == 2
    monkeypatch.setattr(zoo, "select", lambda quick, only: [])
    assert zoo.main(["--out", str(tmp_path), "--force"]) == 0
    assert f"replacing {earlier} (2 runs" in capsys.readouterr().out
    assert earlier.read_text() == ""


def test_zoo_ctrl_c_prints_the_table_of_the_runs_that_finished(tmp_path, capsys, monkeypatch):
    def interrupted(run):
        raise KeyboardInterrupt

    monkeypatch.setattr(zoo, "select", lambda quick, only: list(zoo.all_runs()[:1]))
    monkeypatch.setattr(zoo, "run_one", interrupted)
    assert zoo.main(["--out", str(tmp_path)]) == 130
    out = capsys.readouterr().out
    assert "interrupted (Ctrl-C) after 0 of 1 runs" in out and "| run | split |" in out
    assert "tuning: healthy runs with a finding or a flagged layer 0 of 0" in out
