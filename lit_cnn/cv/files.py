"""Files that survive a kill: every file lit_cnn writes goes to a temporary sibling, is flushed
to disk and renamed over its target, so a kill at any moment leaves the old file or the new
one. The result gets the mode a plain ``open(path, "w")`` would give under the user's umask.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[IO[bytes]], None]) -> None:
    """Writes ``path`` through ``write(file)`` into a temporary sibling, then renames it."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600, and the rename keeps that mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # the rename itself reaches the disk with the directory
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _finite(obj: Any) -> Any:
    # JSON has no NaN or Infinity: a diverged loss is written as null.
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """Writes ``obj`` as indented JSON (NaN and infinities as null), atomically."""
    text = json.dumps(_finite(obj), indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def write_text(path: Path, text: str) -> None:
    """Writes ``text`` atomically."""
    atomic_write(path, lambda f: f.write(text.encode()))


def remove_partial_writes(directory: Path) -> list[Path]:
    """Deletes the temporary files that writes killed midway left under ``directory``.

    Returns:
        The files deleted.
    """
    left = [p for p in Path(directory).rglob(".*.tmp") if p.is_file()]
    for path in left:
        path.unlink(missing_ok=True)
    return left
