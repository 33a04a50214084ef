"""Checks the bench runs before any experiment: the report folder, and the MNIST files' headers.

Both fail cheaply here instead of after minutes of compute: ``--out`` is created and written
to now; each MNIST file is judged by what torchvision will do with it (headers and sizes of the
unpacked files, the md5 of a ``.gz`` it would unpack), with a full decompression only to say
what is wrong with a ``.gz`` that already failed its md5.
"""

from __future__ import annotations

import datetime
import gzip
import hashlib
import json
import struct
import tempfile
import zlib
from pathlib import Path

__all__ = ["earlier_report", "free_folder", "out_problem", "mnist_file_problem"]

_MAGIC = {"images": 0x00000803, "labels": 0x00000801}
"""IDX magic numbers: unsigned bytes (0x08) in 3 dimensions (images) or 1 (labels)."""


def out_problem(out: str) -> str | None:
    """Why the report folder ``out`` cannot be used, as an error line; None when it can.

    Creates the folder (the run would at once) and a probe file in it, which is removed: only
    writing tells a read-only file system or ``/proc`` from a writable folder (as root,
    permission bits say nothing).
    """
    path = Path(out).expanduser()
    fix = "fix by passing --out a folder this run can create and write"
    if path.exists() and not path.is_dir():
        return f"--out {out!r} is a file, not a folder; {fix}."
    above = path
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        return f"--out {out!r} lies under {str(above)!r}, which is a file, not a folder; {fix}."
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        return f"--out {out!r} cannot be written ({err.strerror or err}); {fix}."
    return None


def earlier_report(out: str | Path) -> str | None:
    """What the bench report already in ``out`` holds ("the report of an earlier bench run
    (...)"), or None when ``out`` holds no ``results.json``."""
    js = Path(out).expanduser() / "results.json"
    if not js.is_file():
        return None
    when = datetime.datetime.fromtimestamp(js.stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    try:
        payload = json.loads(js.read_text(encoding="utf-8"))
        names = list(payload["experiments"])
        meta = payload.get("meta") or {}
        budget = (meta.get("budget") or {}).get("name")
        what = (f"{len(names)} experiment{'s' * (len(names) != 1)}"
                + (f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names
                   else "") + (f", budget {budget}" if isinstance(budget, str) else "")
                + (", partial" if meta.get("partial") else "") + f", written {when}")
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        what = f"written {when}"
    return f"the report of an earlier bench run (results.json: {what})"


def free_folder(out: str | Path) -> str:
    """``out`` with the first free suffix: ``gradwatch-report-2``, ``-3``, ..."""
    base = str(out).rstrip("/") or str(out)
    k = 2
    while Path(f"{base}-{k}").expanduser().exists():
        k += 1
    return f"{base}-{k}"


def _kind(name: str) -> str:
    return "images" if "-images-" in name else "labels"


def _header_problem(data: bytes, size: int, kind: str) -> tuple[str, tuple[int, ...]]:
    """What is wrong with an unpacked IDX file from its first 16 bytes and its size; its shape."""
    need = 16 if kind == "images" else 8
    if size == 0:
        return "is empty", ()
    if size < need:
        return f"is truncated ({size:,} bytes, shorter than its {need}-byte header)", ()
    magic = struct.unpack(">I", data[:4])[0]
    if magic != _MAGIC[kind]:
        return (f"is not an MNIST {kind} file (magic number {magic:#010x}, expected "
                f"{_MAGIC[kind]:#010x})"), ()
    shape = struct.unpack(">III", data[4:16]) if kind == "images" else struct.unpack(
        ">I", data[4:8])
    if kind == "images" and shape[1:] != (28, 28):
        return f"holds {shape[1]}×{shape[2]} images, not MNIST's 28×28", shape
    expected = need + shape[0] * (784 if kind == "images" else 1)
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        return (f"is {state} ({size:,} bytes; its header promises {shape[0]:,} {kind}, "
                f"{expected:,} bytes)"), shape
    if shape[0] == 0:
        return f"holds no {kind}", shape
    return "", shape


def _official_md5() -> dict[str, str]:
    """The md5 torchvision requires of each ``.gz`` before it unpacks it (else it downloads)."""
    try:
        from torchvision.datasets import MNIST
    except ImportError:
        return {}
    return {name: md5 for name, md5 in MNIST.resources}


def _gz_problem(path: Path, kind: str, md5: str | None) -> tuple[str, tuple[int, ...]]:
    """What is wrong with a ``.gz`` torchvision would unpack; its shape when readable."""
    blob = path.read_bytes()
    if not blob:
        return "is empty", ()
    if md5 and hashlib.md5(blob).hexdigest() == md5:
        with gzip.open(path) as fh:
            head = fh.read(16)
        return "", struct.unpack(">III", head[4:16]) if kind == "images" else (
            struct.unpack(">I", head[4:8]))
    try:
        data = gzip.decompress(blob)
    except (EOFError, zlib.error) as err:
        return f"is truncated or corrupt ({err})", ()
    except gzip.BadGzipFile:
        return "is not gzip data", ()
    problem, shape = _header_problem(data[:16], len(data), kind)
    if problem or not md5:
        return problem, shape
    return (f"is not the official file (md5 {hashlib.md5(blob).hexdigest()}, torchvision "
            f"expects {md5}), so torchvision would try to download it again"), shape


def mnist_file_problem(raw: Path) -> tuple[Path, str] | None:
    """The first bad MNIST file under ``raw`` and what is wrong with it; None when all are good.

    Reads the files as torchvision will: the four unpacked files when all are there, else the
    four ``.gz`` files. Image and label counts of each split must agree.
    """
    from .data import MNIST_FILES

    unpacked = all((raw / name).is_file() for name in MNIST_FILES)
    md5 = {} if unpacked else _official_md5()
    shapes: dict[str, tuple[int, ...]] = {}
    for name in MNIST_FILES:
        kind = _kind(name)
        path = raw / name if unpacked else raw / (name + ".gz")
        if not path.is_file():
            return path, ("is missing (torchvision unpacks all four .gz files when one unpacked "
                          "file is missing)")
        if unpacked:
            with open(path, "rb") as fh:
                problem, shape = _header_problem(fh.read(16), path.stat().st_size, kind)
        else:
            problem, shape = _gz_problem(path, kind, md5.get(path.name))
        if problem:
            return path, problem
        shapes[name] = shape
    for split in ("train", "t10k"):
        images, labels = shapes[f"{split}-images-idx3-ubyte"], shapes[f"{split}-labels-idx1-ubyte"]
        if images[0] != labels[0]:
            path = raw / (f"{split}-labels-idx1-ubyte" + ("" if unpacked else ".gz"))
            return path, (f"holds {labels[0]:,} labels for {images[0]:,} images (the files of "
                          f"one split must come from the same download)")
    return None
