"""Every command's --help: an example, and paragraphs that rich wraps to the terminal, not to the
source's line breaks (a wrapped example would otherwise split a command over lines)."""

from __future__ import annotations

from itertools import pairwise

import pytest
from typer.testing import CliRunner

from moatmeter.cli import app

COMMANDS = [
    (), ("predict",), ("validate",), ("calibrate",), ("plan",), ("bench",), ("bench", "serve"),
    ("bench", "list"), ("bench", "show"), ("bench", "export"), ("bench", "compare"),
    ("bench", "device"), ("catalog",), ("catalog", "list"), ("catalog", "show"),
    ("catalog", "validate"), ("catalog", "import-hf"),
]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "moatmeter")
def test_help_paragraphs_are_one_line_on_a_wide_terminal(cmd: tuple[str, ...]) -> None:
    res = CliRunner().invoke(app, [*cmd, "--help"], env={"COLUMNS": "2000"}, terminal_width=2000)
    assert res.exit_code == 0, res.output
    head = res.stdout.split("╭")[0]                       # usage and description, before the boxes
    lines = [ln.strip() for ln in head.splitlines()][1:]  # drop the Usage line
    examples = [ln for ln in lines if ln.startswith("Example:")]
    assert examples, f"{cmd}: no example"
    for above, below in pairwise(lines):
        assert not (above and below), f"{cmd}: paragraph split over lines: {above!r} / {below!r}"
