"""Faults of the machine the bot runs on, made real: a database locked by another process and a
work directory on a file system that is full.

They are not switches inside the bot: a second `python` process holds SQLite's write lock with
`BEGIN IMMEDIATE` (exactly what `sqlite3 cvdsr.db` and a long transaction would do), and a
size-capped tmpfs is mounted over the work directory and filled, so the bot meets the same
`database is locked` and ENOSPC errors it would meet in production. Mounting needs root, as on
the CI machines; `mount_small_filesystem` says so clearly when it cannot.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HOLD = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=600)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
print("released", flush=True)
"""


class LockHolder:
    """A second process holding the database's write lock (`BEGIN IMMEDIATE`) for a while."""

    def __init__(self, database: Path, seconds: float) -> None:
        self.database = database
        self.seconds = seconds
        self.proc: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 120.0) -> LockHolder:
        """Start the process and return once it holds the lock."""
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _HOLD, str(self.database), str(self.seconds)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = self.proc.stdout.readline()
        if line.strip() != "locked" or time.monotonic() > deadline:
            self.stop()
            raise RuntimeError(f"the lock holder did not get the lock: {line!r}")
        return self

    def wait(self, timeout: float = 600.0) -> None:
        """Wait until the process committed and exited."""
        assert self.proc is not None
        self.proc.wait(timeout)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.proc.returncode != 0:
            raise RuntimeError(f"the lock holder exited {self.proc.returncode}")

    def stop(self) -> None:
        """Kill the process (the lock goes with it)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def locked(database: Path, seconds: float) -> Iterator[LockHolder]:
    """Hold the database's write lock from another process for `seconds` (killed on exit)."""
    holder = LockHolder(database, seconds).start()
    try:
        yield holder
    finally:
        holder.stop()


@contextmanager
def mount_small_filesystem(folder: Path, size_mb: int) -> Iterator[Path]:
    """Mount a tmpfs of `size_mb` MB over `folder` (created if needed); unmount on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0700", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"cannot mount a {size_mb} MB tmpfs on {folder} (needs root): {result.stderr.strip()}"
        )
    try:
        yield folder
    finally:
        for attempt in range(50):
            done = subprocess.run(["umount", str(folder)], capture_output=True, check=False)
            if done.returncode == 0:
                break
            time.sleep(0.1 * (attempt + 1))  # a file still open in the bot: lazy unmount next
        else:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def fill(folder: Path, name: str = "filler.bin") -> Path:
    """Write a file into `folder` until its file system is full; return the file."""
    path = folder / name
    chunk = b"\0" * 65536
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        while True:
            try:
                os.write(fd, chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    finally:
        os.close(fd)
    return path
