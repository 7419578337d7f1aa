"""Errors of the dataset parsers.

`AnnotationError` is a `UserError` (the CLI prints one "error: ..." line and exits 2). Its message always
starts with the offending file, then says what is wrong and where (record number, variable, shape).
"""

from __future__ import annotations

import os

from harness.errors import UserError


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
