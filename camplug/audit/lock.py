"""One audit at a time per output folder: an exclusive ``flock`` on ``<out>/audit.lock``, held
for the whole run (rank 0 under torchrun) and released by the kernel when the process ends,
even on SIGKILL. The file holds the owner's pid, for the error message."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import AuditError

LOCK_NAME = "audit.lock"


class OutputBusyError(AuditError):
    """Another process holds the output folder's lock."""


def prepare_output(out_dir: Path) -> Path:
    """Create the output folder; ``AuditError`` when it (or a parent) is not a folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise AuditError(f"output folder {out_dir} exists and is not a folder; choose another "
                         "output folder")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise AuditError(f"output folder {out_dir} cannot be created: part of its path is a "
                         "file") from None
    return out_dir


class OutputLock:
    """``with OutputLock(out_dir):`` holds the folder's lock or raises ``OutputBusyError``
    ("output folder X is in use by pid N")."""

    def __init__(self, out_dir: Path) -> None:
        self.path = prepare_output(out_dir) / LOCK_NAME
        self._fd: int | None = None

    def __enter__(self) -> OutputLock:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutputBusyError(
                f"output folder {self.path.parent} is in use by pid {owner} (another camplug "
                "audit); wait for it to finish or choose another output folder"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the lock
            self._fd = None
