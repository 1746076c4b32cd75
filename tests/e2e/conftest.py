"""Shared fixtures of the end-to-end tests: the real `lmtune` binary and a runner for it."""
import os
import subprocess
from pathlib import Path

import pytest

LMTUNE = os.environ.get("LMTUNE_BIN", str(Path(__file__).parents[2] / "build" / "lmtune"))
SOURCE_DIR = Path(os.environ.get("LMTUNE_SOURCE_DIR", Path(__file__).parents[2]))
SHARED_DIR = Path(os.environ.get("LMTUNE_SHARED_DIR", SOURCE_DIR.parent / "shared"))


def run_lmtune(*args, cwd=None, timeout=600):
    """Runs lmtune with the arguments; returns the completed process (text mode)."""
    return subprocess.run([LMTUNE, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture
def lmtune():
    return run_lmtune
