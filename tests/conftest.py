"""Shared test fixtures: run the real `moatmeter` CLI in a subprocess, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run_moatmeter(*args: str, env: dict[str, str] | None = None,
                  timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`python -m moatmeter ARGS` with a clean environment (no user catalog unless given)."""
    base = {k: v for k, v in os.environ.items() if k != "MOATMETER_CATALOG"}
    base.update({"COLUMNS": "120", "NO_COLOR": "1", **(env or {})})
    return subprocess.run([sys.executable, "-m", "moatmeter", *args], capture_output=True,
                          text=True, env=base, timeout=timeout, cwd=REPO)


@pytest.fixture(scope="session")
def moatmeter() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The subprocess runner above, for tests that need the real exit code and stderr."""
    return run_moatmeter
