"""Every ```python block of the README and the docs runs as written, each in a fresh process.

A block that cannot run by design (a fragment of the reader's own loop, or one that needs a GPU
or torchrun) carries the line ``<!-- snippet: no-run (reason) -->`` right before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
NO_RUN = "<!-- snippet: no-run"
BLOCK = re.compile(r"(?P<before>[^\n]*)\n```python\n(?P<code>.*?)\n```", re.S)


def blocks() -> list[tuple[str, str, bool]]:
    """(page:line, code, runnable) for every python block."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text[:m.start("code")].count("\n") + 1
            out.append((f"{page.relative_to(REPO)}:{line}", m.group("code"),
                        not m.group("before").startswith(NO_RUN)))
    return out


def test_every_page_with_python_blocks_is_found():
    found = blocks()
    assert any(where.startswith("README.md") for where, _, run in found if run)
    assert all(where and code for where, code, _ in found)


@pytest.mark.parametrize("where, code", [(w, c) for w, c, run in blocks() if run],
                         ids=[w for w, _, run in blocks() if run])
def test_snippet_runs_as_written(where, code, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "MPLBACKEND": "Agg", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{where} failed:\n{proc.stderr[-3000:]}"
