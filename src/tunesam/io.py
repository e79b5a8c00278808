"""Output files and folders: atomic writes (a file is either complete or absent, never
half-written), and folders owned by one process at a time."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    The file gets the permissions a plain ``open`` would give it (``0666`` less the umask),
    not ``mkstemp``'s private ``0600``, so a lab's group can read runs and datasets.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = 0o666 & ~_umask()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, mode)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode)  # again: a writer may have made the file anew (safetensors writes it 0600)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if disk_full(exc, path.parent):
            raise OSError(errno.ENOSPC, f"the disk is full: {path.name} could not be written", str(path.parent)) from exc
        raise


def disk_full(exc: BaseException, folder: Path) -> bool:
    """Whether ``exc`` (an ``OSError``, or PyTorch's and safetensors' own wording of a failed
    write) came from a full disk under ``folder``."""
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(exc, Exception):  # an interrupt
        return False
    text = str(exc)
    if not any(w in text for w in ("inline_container", "file write failed", "No space left", "code: 28")):
        return False
    try:
        return shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        return False


def atomic_write(path: str | Path, write: Callable[[Path], Any]) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path`` atomically."""
    with atomic_path(path) as tmp:
        write(tmp)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=2) + "\n"))


def lock_file(folder: str | Path) -> Path:
    """The lock of ``folder``: ``.<name>.lock`` beside it (a link is followed, so two paths to
    one folder share one lock), so the folder itself may be absent, empty or replaced whole."""
    real = Path(os.path.realpath(folder))
    return real.parent / f".{real.name}.lock"


@contextlib.contextmanager
def owned(folder: str | Path, what: str, take: bool = True) -> Iterator[None]:
    """Own ``folder`` (``what``: "run", "prepared dataset", "study", for the message) while the
    block runs: an OS lock (``flock``), so a second process writing there is refused at once,
    and a process that dies, however it dies, releases it. ``take=False``: a no-op (the other
    ranks of a DDP run, whose rank 0 owns the folder)."""
    if not take:
        yield
        return
    refuse_dangling_link(folder)
    path = lock_file(folder)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(path, timeout=0)
        lock.acquire()
    except filelock.Timeout:
        raise ValueError(f"{folder}: another tunesam process is writing this {what} now (it holds {path}); "
                         "wait for it to finish, or choose another --out") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot lock the {what} {folder}: {exc.strerror}", str(path)) from exc
    try:
        yield
    finally:
        lock.release()


def refuse_dangling_link(out: str | Path) -> None:
    """An output path that is a link to nothing would fail later in words about temporary
    files: say what it is now."""
    out = Path(out)
    if out.is_symlink() and not out.exists():
        raise FileNotFoundError(f"{out}: is a link to {os.path.realpath(out)}, which does not exist; create that "
                                "folder, remove the link, or choose another --out")
