"""Atomic file writes: write to a temporary file in the target folder, fsync, then rename.

A crash or ``kill -9`` during a write leaves either the old file or the new one, never a
truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path
from typing import Iterator

import torch

from ..errors import OutputError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    The temporary name keeps ``suffix`` (e.g. ``.nii.gz``) so writers that pick a format from the
    extension still work. On any exception the temporary file is removed and ``target`` is untouched.

    Raises:
        OutputError: (an :class:`~ideal_monai.errors.IdealInputError`) when the folder cannot be
            created or written, or the write fails (full disk, permissions...), naming the path.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp" + suffix,
                                   dir=target.parent)
    except OSError as e:
        raise OutputError(target.parent, f"cannot write into this output folder: {e.strerror or e}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, target)
        with contextlib.suppress(OSError):  # make the rename itself durable (best effort)
            dir_fd = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        if isinstance(e, OSError):
            raise OutputError(target, f"cannot write: {e.strerror or e}") from e
        raise


def atomic_save_torch(obj, target: str | os.PathLike) -> None:
    """``torch.save(obj, target)`` atomically.

    Saved through a file object: torch names the archive inside after a *path*'s file name, which here
    would be the random temporary one, so the same weights would give different bytes (and checksums)."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


def atomic_write_text(text: str, target: str | os.PathLike) -> None:
    """Write ``text`` to ``target`` atomically (UTF-8)."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


#: Names of :func:`atomic_path` temporaries: ``.<target name>.<8 random chars>.tmp[suffix]``.
_TEMPORARY = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp(\..*)?$")


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete temporaries that a killed process (``kill -9``, power loss) left in ``folder``.

    Call it when a run (re)starts and no other process writes into ``folder``. Returns the removed paths.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if p.is_file() and _TEMPORARY.match(p.name):
            with contextlib.suppress(OSError):
                p.unlink()
                removed.append(p)
    return removed
