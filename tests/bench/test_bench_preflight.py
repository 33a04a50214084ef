"""The bench's pre-flight: bad --threads and --out, and broken MNIST files, stop before any
experiment with one line (exit 2) that names the flag or the file and the fix."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path

import pytest

import gradwatch.bench.__main__ as cli
from gradwatch.bench.data import MNIST_FILES, load_mnist

SHARED = Path("/work/shared/data/MNIST/raw")


@pytest.fixture
def no_run(monkeypatch):
    """Fails the test if the bench starts an experiment."""
    def run_bench(*args, **kwargs):
        raise AssertionError("an experiment started although the preflight should have stopped")

    monkeypatch.setattr(cli, "run_bench", run_bench)


def _error(capsys) -> str:
    lines = capsys.readouterr().err.strip().split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _idx(n: int, images: bool, extra: bytes = b"") -> bytes:
    """A small IDX file: ``n`` 28×28 images (magic 0x803) or ``n`` labels (magic 0x801)."""
    if images:
        return struct.pack(">IIII", 0x803, n, 28, 28) + bytes(n * 784) + extra
    return struct.pack(">II", 0x801, n) + bytes(n) + extra


def _raw_set(root: Path, train: int = 5, test: int = 3) -> Path:
    """DATA/MNIST/raw with the four unpacked files; returns the raw folder."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        n = train if name.startswith("train") else test
        (raw / name).write_bytes(_idx(n, "images" in name))
    return raw


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("value", ["0", "-3"])
def test_threads_below_one_is_a_usage_error(value, capsys, no_run):
    with pytest.raises(SystemExit) as stop:
        cli.main(["tanh_chain", "--threads", value])
    err = capsys.readouterr().err.strip().split("\n")[-1]
    assert stop.value.code == 2 and "--threads" in err and value in err and "positive" in err


def test_out_naming_a_file_stops_before_any_experiment(tmp_path, capsys, no_run):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for out in (afile, afile / "report"):
        assert cli.main(["tanh_chain", "--out", str(out)]) == 2
        line = _error(capsys)
        assert "--out" in line and str(afile) in line and "a file" in line and "fix by" in line
    assert afile.read_text() == "x"


def test_out_that_cannot_be_created_stops_before_any_experiment(capsys, no_run):
    assert cli.main(["tanh_chain", "--out", "/proc/gradwatch-report"]) == 2
    line = _error(capsys)
    assert "--out '/proc/gradwatch-report'" in line and "cannot be written" in line


def test_a_writable_out_is_left_as_the_run_needs_it(tmp_path, capsys, monkeypatch):
    seen = []
    monkeypatch.setattr(cli, "run_bench", lambda *a, **k: seen.append(k["out"]) or ("m", "j"))
    out = tmp_path / "new" / "report"
    assert cli.main(["tanh_chain", "--out", str(out)]) == 0
    assert seen == [str(out)] and out.is_dir() and list(out.iterdir()) == []


# ----------------------------------------------------------------------------- MNIST files
def _check(capsys, data: Path) -> str:
    assert cli.main(["sigmoid_mlp", "--data-dir", str(data), "--out", str(data / "r")]) == 2
    line = _error(capsys)
    assert "--data-dir" in line and "GRADWATCH_DATA" in line and "fix by" in line
    return line


def test_truncated_unpacked_file_is_named(tmp_path, capsys, no_run):
    raw = _raw_set(tmp_path)
    path = raw / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    line = _check(capsys, tmp_path)
    assert str(path) in line and "truncated" in line and "1,000 bytes" in line


def test_wrong_magic_and_empty_files_are_named(tmp_path, capsys, no_run):
    raw = _raw_set(tmp_path)
    (raw / "t10k-labels-idx1-ubyte").write_bytes(_idx(3, True))  # images where labels belong
    line = _check(capsys, tmp_path)
    assert "t10k-labels-idx1-ubyte" in line and "not an MNIST labels file" in line
    (raw / "t10k-labels-idx1-ubyte").write_bytes(b"")
    assert "t10k-labels-idx1-ubyte' is empty" in _check(capsys, tmp_path)


def test_image_and_label_counts_must_agree(tmp_path, capsys, no_run):
    raw = _raw_set(tmp_path, train=5)
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx(3, False))
    line = _check(capsys, tmp_path)
    assert "train-labels-idx1-ubyte" in line and "3 labels" in line and "5 images" in line


def test_load_mnist_refuses_mismatched_counts(tmp_path):
    raw = _raw_set(tmp_path, train=5)
    (raw / "train-labels-idx1-ubyte").write_bytes(_idx(3, False))
    with pytest.raises(ValueError, match="5 images but 3 labels"):
        load_mnist(tmp_path, download=False)


def test_gz_files_are_checked_as_torchvision_does(tmp_path, capsys, no_run):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_FILES:
        n = 5 if name.startswith("train") else 3
        (raw / (name + ".gz")).write_bytes(gzip.compress(_idx(n, "images" in name)))
    # a well-formed file that is not the official one: torchvision would download over it
    line = _check(capsys, tmp_path)
    assert "train-images-idx3-ubyte.gz" in line and "md5" in line and "download" in line
    gz = raw / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:40])
    line = _check(capsys, tmp_path)
    assert str(gz) in line and "truncated or corrupt" in line
    gz.write_bytes(b"not gzip at all")
    assert "not gzip data" in _check(capsys, tmp_path)


@pytest.mark.skipif(not SHARED.is_dir(), reason="no MNIST copy on this machine")
def test_the_official_files_pass_and_a_truncated_copy_is_named(tmp_path, capsys):
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(SHARED, raw)
    assert cli.mnist_problem(str(tmp_path)) == (None, None)
    gz = raw / "train-labels-idx1-ubyte.gz"
    gz.chmod(0o644)
    gz.write_bytes(gz.read_bytes()[:-100])
    error, _ = cli.mnist_problem(str(tmp_path))
    assert str(gz) in error and "truncated or corrupt" in error
