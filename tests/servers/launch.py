"""Start the test servers as real processes on 127.0.0.1 and stop them again."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent


@contextlib.contextmanager
def scripted(*args: str) -> Iterator[str]:
    """Yield the base URL of a scripted-timing/fault server started with these CLI args."""
    proc = subprocess.Popen([sys.executable, str(HERE / "scripted.py"), *args],
                            stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("PORT "):
            raise RuntimeError(f"scripted server did not start: {line!r}")
        yield f"http://127.0.0.1:{int(line.split()[1])}"
    finally:
        proc.kill()
        proc.wait(timeout=10)
