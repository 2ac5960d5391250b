"""One way to hash a file: sha256 of its bytes, memoised per process.

The checkpoint loader, a run's fingerprint, a chapter's weights banner and the feature cache's image keys all hash
files; they share this helper so that a file is read once per process however many of them ask (a table's runs
read the same images and the same checkpoint again and again).
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes.

    Parameters
    ----------
    path : str or os.PathLike
        The file; ``~`` is expanded.

    Returns
    -------
    str
        64 hex digits. Memoised per (resolved path, size, modification time, inode, device): a file rewritten in
        place gets a new digest, an unchanged one is read once per process.

    Raises
    ------
    FileNotFoundError
        When ``path`` does not exist.
    """
    path = Path(path).expanduser().resolve()
    st = path.stat()
    return _file_sha256(str(path), st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


@functools.lru_cache(maxsize=1 << 16)
def _file_sha256(path: str, size: int, mtime_ns: int, inode: int, device: int) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
