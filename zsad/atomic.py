"""Atomic files and folders: a reader sees the old content or the new one, never half of either.

Every file zsad writes goes through a temporary sibling and an ``os.replace``; every folder (run folders, the
synthetic dataset) is built as a hidden temporary sibling and renamed into place. Temporary names are
``.<name>.tmp-<pid>-<random>`` (git-ignored), so that

- a crash, SIGINT or SIGTERM inside :func:`atomic_folder` removes the temporary folder (SIGTERM is turned into an
  exception for the duration, when nobody else has installed a handler);
- a temporary folder left by a process that died without cleaning up (SIGKILL, power loss) is removed by the next
  write into the same parent, once its process is gone.  Only folders that carry zsad's marker file are removed.

Files get ordinary permissions (``0666 & ~umask``, 0644 by default), folders ``0777 & ~umask`` (0755), whatever
the temporary-file functions create.
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

TMP_MARK = ".tmp-"  # in every temporary name; matches the `*.tmp-*` line of .gitignore
_MARKER = ".zsad-partial"  # written first into every temporary folder: proof that zsad made it
_STALE = re.compile(r"^\..+\.(?:tmp|old)-(\d+)-")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Return the permission bits of a new file: ``0o666 & ~umask``.

    Returns
    -------
    int
        E.g. ``0o644`` with the usual umask 022.
    """
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """Return the permission bits of a new folder: ``0o777 & ~umask``.

    Returns
    -------
    int
        E.g. ``0o755`` with the usual umask 022.
    """
    return 0o777 & ~_umask()


def _tmp_prefix(path: Path, kind: str = "tmp") -> str:
    return f".{path.name}.{kind}-{os.getpid()}-"  # kind "tmp": contains TMP_MARK


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary sibling; concurrent writers: the last rename wins.

    The parent folder is created when missing; on any error the temporary file is removed.

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    data : bytes
        Its new content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(path), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write text to ``path`` atomically, UTF-8 encoded (:func:`write_bytes`).

    Parameters
    ----------
    path : str or os.PathLike
        The file to write.
    text : str
        Its new content.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    return write_bytes(path, text.encode("utf-8"))


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(parent: str | os.PathLike) -> list[Path]:
    """Remove temporary folders under ``parent`` left by zsad processes that no longer run; return them.

    A folder qualifies only when its name is one of zsad's temporary names, it holds zsad's marker file, and the
    process id in its name is not running: nothing a user made, and nothing a live writer is using, is touched.

    Parameters
    ----------
    parent : str or os.PathLike
        The folder to clean; a missing folder is not an error.

    Returns
    -------
    list of pathlib.Path
        The removed folders.
    """
    parent = Path(parent)
    removed = []
    if not parent.is_dir():
        return removed
    for entry in parent.iterdir():
        m = _STALE.match(entry.name)
        if m and entry.is_dir() and not entry.is_symlink() and (entry / _MARKER).is_file() \
                and not _alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


class Terminated(BaseException):
    """Raised in the main thread when SIGTERM arrives inside :func:`terminate_as_exception`."""


@contextlib.contextmanager
def terminate_as_exception():
    """Turn SIGTERM into :class:`Terminated` for the block, so ``finally``/``except`` clean-ups run.

    Only in the main thread and only when SIGTERM has its default action (a Ray worker, a notebook kernel or the
    user's program may have their own handler, which is left alone).
    """
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def _raise(signum, frame):
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, *, replace: bool = False):
    """Build a folder under a temporary name and move it to ``path`` when the block ends without error.

    Yields the temporary folder. ``replace=True`` lets it take the place of an existing ``path`` (the caller checks
    that the old folder may go); the old one is renamed aside first and removed only after the new one is in place.
    On any error, SIGINT or SIGTERM the temporary folder is removed and ``path`` is left as it was. Stale temporary
    folders of dead processes in the parent are removed first (:func:`remove_stale`).

    Parameters
    ----------
    path : str or os.PathLike
        Where the finished folder goes; its parent is created when missing.
    replace : bool, default False
        Let the new folder take the place of an existing ``path``.

    Yields
    ------
    pathlib.Path
        The temporary folder to fill.

    Raises
    ------
    FileExistsError
        When ``path`` exists and ``replace`` is False (raised at the end of the block).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent)
    with terminate_as_exception():
        tmp = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path), dir=path.parent))
        try:
            (tmp / _MARKER).touch()
            yield tmp
            (tmp / _MARKER).unlink()
            os.chmod(tmp, folder_mode())
            if path.exists() or path.is_symlink():
                if not replace:
                    raise FileExistsError(f"{path} exists already")
                old = Path(tempfile.mkdtemp(prefix=_tmp_prefix(path, "old"), dir=path.parent))
                (old / _MARKER).touch()
                aside = old / "content"
                path.rename(aside)
                try:
                    tmp.rename(path)
                except BaseException:
                    aside.rename(path)  # put the old folder back
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
