"""The helm binary the chart tests shell out to (built into the cache by e2e/cluster.sh)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def helm() -> str:
    bindir = subprocess.run([str(ROOT / "e2e/cluster.sh"), "bindir"], capture_output=True, text=True,
                            check=True).stdout.strip()
    path = Path(bindir) / "helm"
    if not path.exists():
        pytest.fail(f"helm is not in {bindir}: run `e2e/cluster.sh build` (CI builds it)")
    return str(path)
