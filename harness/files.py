"""Files other processes may read at any moment (Prometheus, a resumed sweep, the sweep report, a user's
`cat`): each is written whole to a hidden temp file beside it and renamed over it, so a reader sees the old
file or the new one, never half of one, even when the writer is killed mid-write. Checkpoints have their
own writer (harness.checkpoint: fsync'd, binary)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A hidden temp path beside `path` to write to (e.g. a figure's savefig); renamed over `path` when the
    block ends, removed if it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2) + "\n")
