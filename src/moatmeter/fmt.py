"""Number formatting shared by the terminal table and the HTML report, so both read alike."""

from __future__ import annotations

import math


def money(x: float | None) -> str:
    """USD with k/M suffixes; '-' for a missing or non-finite value."""
    if x is None or not math.isfinite(x):
        return "-"
    if abs(x) >= 1e6:
        return f"${x / 1e6:,.2f}M"
    if abs(x) >= 1e3:
        return f"${x / 1e3:,.0f}k"
    return f"${x:,.0f}"
