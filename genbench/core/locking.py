"""One lock per run, so two genbench processes never train or evaluate the same run at once.

The lock is an ``flock`` on ``<out>/<dataset>/<model>/.<run-id>.lock``, beside the run folder
rather than inside it, so ``--fresh`` can delete the folder while holding it. The kernel releases
it when the holder dies (SIGKILL included): a stale lock cannot block anyone. The holder removes
the file when it is done, so only a killed process leaves one behind (harmless: the next process
takes it over). Locks are re-entrant
within a process (training and then evaluating a run takes it twice).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are not protected against concurrent processes
    fcntl = None

_held: dict[str, tuple[int, int]] = {}  # lock path -> (file descriptor, depth)
_guard = threading.Lock()


def lock_path_for(run_path: Path) -> Path:
    return run_path.parent / f".{run_path.name}.lock"


@contextlib.contextmanager
def run_lock(run_path: str | Path, log=None) -> Iterator[None]:
    """Hold the lock of the run folder ``run_path``; wait (saying so once) while another process
    holds it."""
    if int(os.environ.get("RANK", "0")) > 0:  # data-parallel ranks: rank 0 holds the lock
        yield
        return
    path = lock_path_for(Path(run_path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = str(path.resolve())
    with _guard:
        if key in _held:
            fd, depth = _held[key]
            _held[key] = (fd, depth + 1)
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            _release(key)
        return
    if fcntl is None:
        yield
        return
    fd = _acquire(path, run_path, log)
    with _guard:
        _held[key] = (fd, 1)
    try:
        yield
    finally:
        _release(key)


def _acquire(path: Path, run_path, log) -> int:
    """Open and flock ``path``; retry when the holder removed the file while we waited (we would
    hold a lock on a name nobody else can see)."""
    said = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not said:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
                    (log or (lambda m: print(m, file=sys.stderr, flush=True)))(
                        f"waiting for {Path(run_path).name}: {holder} is using it")
                    said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(fd).st_ino:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}\n".encode(), 0)
            return fd
        except BaseException:
            os.close(fd)
            raise


def _release(key: str) -> None:
    with _guard:
        fd, depth = _held[key]
        if depth > 1:
            _held[key] = (fd, depth - 1)
            return
        del _held[key]
    # Remove the file while still holding the lock (a waiter then sees the name gone and
    # retries), so no lock files accumulate; closing the descriptor releases the flock.
    try:
        os.unlink(key)
    except FileNotFoundError:
        pass
    os.close(fd)
