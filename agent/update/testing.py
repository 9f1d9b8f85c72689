"""Release roots for tests: one whose current release is the code under test, and a fingerprint of a root
(to show an update that was refused left it exactly as it was)."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from agent.launcher import Layout


def make_root(root: Path, version: str = "0.1.0") -> Layout:
    """A release root whose current release ``version`` is the code under test: its venv's ``roomba-agent``
    and ``python`` are this interpreter's (the virtualenv running the tests)."""
    layout = Layout(root)
    layout.ensure()
    venv_bin = layout.release_dir(version) / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "roomba-agent").symlink_to(Path(sys.executable).parent / "roomba-agent")
    (venv_bin / "python").symlink_to(sys.executable)
    layout.mark_installed(version, f'{{"version": "{version}"}}'.encode())
    layout.activate(version)
    layout.downloads_dir()
    return layout


def tree(root: Path) -> dict[str, str]:
    """Every file, link and directory under ``root`` (links not followed) with its content's hash."""
    out: dict[str, str] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = "-> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
