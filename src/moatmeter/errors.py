"""User-facing errors: every bad input becomes one line, exit code 2, no traceback."""

from __future__ import annotations


class MoatError(Exception):
    """An error the user can fix; the CLI prints ``str(err)`` on one line and exits with code 2."""

    exit_code = 2

    def __init__(self, message: str, *, file: str | None = None, entry: str | None = None,
                 field: str | None = None) -> None:
        self.file = file
        self.entry = entry
        self.field = field
        self.detail = " ".join(message.split())
        parts = []
        if file:
            parts.append(str(file))
        if entry:
            parts.append(f"entry '{entry}'")
        if field:
            parts.append(f"field '{field}'")
        where = ": ".join(parts)
        super().__init__(f"{where}: {self.detail}" if where else self.detail)


class CatalogError(MoatError):
    """A catalog file (bundled or user) is malformed or inconsistent."""


class InputError(MoatError):
    """A command-line argument, scenario or observation file is invalid."""
