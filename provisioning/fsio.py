"""Atomic, permission-correct file output: a crash leaves either the old state or the new one.

Files are written to a temp name in the same directory, fsynced, then renamed; directories of files are
built under a temp name and renamed into place, so an identity directory appears complete or not at all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path

from provisioning.errors import KeyExists, OutputExists

TMP_MARK = ".tmp-"


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file, read 1 MiB at a time (here, not in ``provisioning.release``, so the agent
    can hash a download without importing cryptography and the PKCS#11 binding at start)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644, *, overwrite: bool = False) -> None:
    """Write ``data`` to ``path`` via temp + fsync + rename; refuse to replace unless ``overwrite``."""
    path = Path(path)
    tmp = path.with_name(f"{TMP_MARK}{path.name}.{secrets.token_hex(4)}")
    _write_new(tmp, data, mode)
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise OutputExists(f"{path} already exists; refusing to overwrite it") from None
            os.unlink(tmp)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def ensure_private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the last component."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)
    return path


def write_directory(
    target: Path, files: Mapping[str, tuple[bytes, int]], *, guard: str = "device.key"
) -> None:
    """Make ``target`` (0700) hold ``files`` ({name: (data, mode)}), appearing all at once.

    If ``target`` does not exist (or is empty) the files are assembled in a sibling temp directory and
    renamed into place. If it exists with unrelated files, each file is written atomically and the key last
    (whose presence is what marks an identity as made). Refuses if ``guard`` (or any file we would write)
    is already there, so an existing key is never replaced.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    if target.exists():
        clashes = [name for name in files if (target / name).exists()]
        if (target / guard).exists() or clashes:
            raise KeyExists(
                f"{target} already holds {guard if (target / guard).exists() else clashes[0]}; "
                "refusing to overwrite an identity"
            )
        if any(target.iterdir()):
            os.chmod(target, 0o700)
            ordered = sorted(files, key=lambda n: n == guard)
            for name in ordered:
                data, mode = files[name]
                atomic_write(target / name, data, mode)
            return
    tmp = parent / f"{TMP_MARK}{target.name}.{secrets.token_hex(4)}"
    os.mkdir(tmp, 0o700)
    try:
        os.chmod(tmp, 0o700)
        for name, (data, mode) in files.items():
            _write_new(tmp / name, data, mode)
        fsync_dir(tmp)
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if target.exists():
                raise KeyExists(
                    f"{target} appeared while writing it; refusing to overwrite an identity"
                ) from exc
            raise
        fsync_dir(parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_stale_temps(directory: Path) -> int:
    """Delete temp files/directories an interrupted run left behind; returns how many."""
    count = 0
    if not Path(directory).is_dir():
        return 0
    for entry in Path(directory).iterdir():
        if entry.name.startswith(TMP_MARK):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    entry.unlink()
            count += 1
    return count
