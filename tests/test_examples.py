"""The examples run as their readers would run them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quickstart_connects_one_mailbox() -> None:
    done = subprocess.run(
        [sys.executable, "examples/quickstart.py"], cwd=ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3. status: success (ann@acme.io)" in done.stdout
    assert "4. account ann@acme.io" in done.stdout
