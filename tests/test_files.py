"""harness.files: a reader sees the old file or the new one, never a torn one, even if the writer dies."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness import files


def test_write_json_round_trips_and_makes_its_folder(tmp_path):
    path = tmp_path / "a" / "b" / "summary.json"
    files.write_json(path, {"value": 0.5, "steps": [1, 2]})
    assert json.loads(path.read_text()) == {"value": 0.5, "steps": [1, 2]}
    assert sorted(p.name for p in path.parent.iterdir()) == ["summary.json"]  # no temp file left behind


def test_a_writer_killed_mid_write_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "sweep.json"
    files.write_json(path, {"runs": ["a", "b"]})
    real = Path.write_text

    def dies_halfway(self, text, *a, **kw):  # half the bytes reach the disk, then the process "dies"
        real(self, text[: len(text) // 2], *a, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        files.write_json(path, {"runs": ["a", "b", "c", "d"]})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == {"runs": ["a", "b"]}


def test_the_rename_is_what_publishes_the_new_content(tmp_path, monkeypatch):
    path = tmp_path / "config.yaml"
    files.write_text_atomic(path, "old: 1\n")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append(Path(dst).read_text())  # what a reader sees just before the rename
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    files.write_text_atomic(path, "new: 2\n")
    assert seen == ["old: 1\n"] and path.read_text() == "new: 2\n"


def test_atomic_path_publishes_a_whole_figure_or_nothing(tmp_path):
    """sweeps/report.py saves report.png through atomic_path: a failing savefig leaves the old figure and no
    temp file; a finished one replaces it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = tmp_path / "report.png"
    path.write_bytes(b"old figure")
    fig = plt.figure()
    with pytest.raises(ValueError), files.atomic_path(path) as tmp:
        tmp.write_bytes(b"\x89PNG half")
        raise ValueError("savefig failed")
    assert path.read_bytes() == b"old figure" and sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.png"]
