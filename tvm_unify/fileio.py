"""Output files are written atomically: a temp file beside the target, renamed into place on success.

A failed compile or export must never leave a half-written ``model.so`` that a later step would load.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import UserError


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in ``path``'s directory; move it to ``path`` only if the body succeeds."""
    target = Path(path)
    if not target.parent.is_dir():
        raise UserError(f"output directory does not exist: {target.parent}")
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix,
                                    dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the output is an ordinary file
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def require_file(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or fail with a one-line error if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{what} not found: {p}")
    return p


def load_npy(path: str | os.PathLike, what: str = "input file") -> np.ndarray:
    """An existing ``.npy`` array file (no pickles), or a one-line error naming ``what`` and the path."""
    p = require_file(path, what)
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise UserError(f"not a .npy array file: {p} ({err})") from None
