"""The `moatmeter` command. Each command group lives in its own module and registers itself here."""

from __future__ import annotations

import inspect
import re
import sys

import typer
from rich.markup import escape

from moatmeter.cli import bench_device_cmds, bench_serve_cmds, catalog_cmds, perf_cmds, plan_cmds
from moatmeter.cli.common import err_console
from moatmeter.errors import MoatError

app = typer.Typer(
    name="moatmeter",
    help=(
        "Which accelerators and which software stack should we buy to serve our LLMs, and what "
        "will it really cost?  Predict serving performance, measure it on your own hardware, and "
        "price total cost of ownership with lock-in included, fully offline.\n\n"
        "Example:  moatmeter plan examples/sovereign-bank-70b.yaml --report report.html"
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)
bench_app = typer.Typer(
    help="Measure your own hardware and servers; results go to a SQLite store.\n\n"
    "Example:  moatmeter bench serve --url http://127.0.0.1:8000 --model m --requests 100",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")

catalog_cmds.register(app)
perf_cmds.register(app)
plan_cmds.register(app)
bench_serve_cmds.register(app, bench_app)
bench_device_cmds.register(app, bench_app)


def _unwrap(text: str) -> str:
    """Join the hard-wrapped lines of each help paragraph, so rich wraps it to the terminal's width
    (its "rich" markup mode keeps source line breaks) and each example stays one command line."""
    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _unwrap_help(typer_app: typer.Typer) -> None:
    for cmd in typer_app.registered_commands:
        doc = cmd.help or (cmd.callback.__doc__ if cmd.callback else None)
        if doc:
            cmd.help = _unwrap(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_help(group.typer_instance)


_unwrap_help(app)


def main() -> None:
    try:
        app()
    except MoatError as exc:
        msg = escape(str(exc))
        err_console.print(f"[bold red]error:[/] {msg}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
