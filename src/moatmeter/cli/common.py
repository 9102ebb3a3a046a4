"""Shared CLI plumbing: catalog and calibration options, JSON printing, one-line errors."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from moatmeter.catalog.load import Catalog, load_catalog
from moatmeter.perf.calibrate import Calibration

# Redirected to a file or a pipe, rich would fit tables to 80 columns and cut numbers short
# ("30,…"); there is no terminal to fit, so give them room ($COLUMNS still wins).
PIPED_WIDTH = 200
console = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH)
err_console = Console(stderr=True)

CatalogOpt = Annotated[
    Path | None,
    typer.Option(
        "--catalog",
        envvar="MOATMETER_CATALOG",
        help="User catalog directory whose YAML files add or override bundled entries.",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
CalibrationOpt = Annotated[
    Path | None,
    typer.Option(
        "--calibration",
        envvar="MOATMETER_CALIBRATION",
        help="Calibration JSON to use instead of the bundled one (what `moatmeter calibrate "
        "--out` wrote, e.g. refitted on your own runs).",
        show_default=False,
    ),
]

_cache: dict[str, Catalog] = {}


def get_catalog(user_dir: Path | None = None) -> Catalog:
    key = str(user_dir)
    if key not in _cache:
        _cache[key] = load_catalog(user_dir)
    return _cache[key]


def get_calibration(path: Path | None) -> Calibration | None:
    """The calibration file the user named, or None for the bundled one."""
    return Calibration.load(path) if path is not None else None


def _clean(obj: Any) -> Any:
    """NaN/inf are not JSON: emit null so every consumer can parse the output."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalar
        return _clean(obj.item())
    return obj


def print_json(obj: Any) -> None:
    print(json.dumps(_clean(obj), indent=2, default=str))
