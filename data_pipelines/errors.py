"""The project's user-facing error types, kept in the lowest layer that raises them.

`UserError` is bad input from the user (a file, a shape, a config value): the CLI (harness/cli.py) turns it into
one `error: ...` line and exit code 2. `AnnotationError` is the parsers' UserError; its message always starts
with the offending file, then says what is wrong and where (record number, variable, shape).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input from the user (file, shape, config value): the message says what and where."""


class AnnotationError(UserError):
    """A missing, unreadable or malformed annotation file. `path` is kept as an attribute."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(message)
        self.path = path

    @classmethod
    def at(cls, path, what: str) -> AnnotationError:
        """`<path>: <what>` - the one message format used by every parser."""
        return cls(f"{os.fspath(path)}: {what}", os.fspath(path))

    def __reduce__(self):  # keep `path` when the error crosses a process boundary (DataLoader workers)
        return type(self), (str(self), self.path)


def read_json(path: Path) -> Any:
    """Parse an annotation JSON file; a missing, unreadable or invalid file is an AnnotationError naming it
    (with line and column for syntax errors). The caller checks the structure."""
    if not path.is_file():
        raise AnnotationError.at(path, "annotation file not found")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError.at(path, f"invalid JSON at line {exc.lineno} column {exc.colno}: "
                                       f"{exc.msg}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError.at(path, f"cannot read ({exc})") from exc
