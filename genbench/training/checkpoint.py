"""Checksummed checkpoints with one previous generation kept.

A checkpoint file is a header line ``GENBENCH-CHECKPOINT 1 sha256=<hex> run=<run id>`` followed by
the ``torch.save`` payload; the digest covers the payload. Saving first moves the current file (one
this process wrote or verified) to ``checkpoint.prev.pt``, then writes the new one atomically. A
file that is truncated, corrupted or not a checkpoint is reported in one line and the previous
generation is used instead.
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import sys
from pathlib import Path
from typing import Any

import torch

from genbench.core.errors import GenbenchError
from genbench.core.io import write_bytes

MAGIC = b"GENBENCH-CHECKPOINT 1 "


class CorruptCheckpoint(Exception):
    """A checkpoint file that cannot be trusted; the message says why."""


class ForeignCheckpoint(GenbenchError):
    """A valid checkpoint written by another run (another model or config)."""


def encode(state: dict[str, Any], run_id: str) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = MAGIC + f"sha256={hashlib.sha256(payload).hexdigest()} run={run_id}\n".encode()
    return header + payload


def decode(data: bytes, map_location=None) -> tuple[dict[str, Any], str | None]:
    """The state and the run id it was written for; raises :class:`CorruptCheckpoint`.

    Files from before checksums (a bare ``torch.save`` zip) load without a check (run id None).
    """
    if data.startswith(MAGIC):
        newline = data.find(b"\n")
        if newline < 0:
            raise CorruptCheckpoint("truncated header")
        fields = dict(part.split("=", 1) for part in data[len(MAGIC):newline].decode().split())
        payload = data[newline + 1:]
        if hashlib.sha256(payload).hexdigest() != fields.get("sha256"):
            raise CorruptCheckpoint("checksum mismatch (truncated or corrupted)")
        run_id = fields.get("run")
    elif data.startswith(b"PK\x03\x04"):  # torch's zip format, written before checksums
        payload, run_id = data, None
    else:
        raise CorruptCheckpoint("not a genbench checkpoint" if data else "empty file")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=False)
    except Exception as error:  # a legacy file cut short fails here
        raise CorruptCheckpoint(f"unreadable ({type(error).__name__})") from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise CorruptCheckpoint("not a training checkpoint")
    return state, run_id


class CheckpointStore:
    """``checkpoint.pt`` and ``checkpoint.prev.pt`` of one run folder."""

    def __init__(self, path: Path, run_id: str):
        self.path = Path(path)
        self.previous_path = self.path.with_name(self.path.stem + ".prev" + self.path.suffix)
        self.run_id = run_id
        self._current_trusted = False  # only a file we wrote or verified may become "previous"

    def exists(self) -> bool:
        return self.path.is_file() or self.previous_path.is_file()

    def load(self, map_location=None, log=None) -> dict[str, Any] | None:
        """The newest valid checkpoint of this run, or None when there is none.

        Corrupt files are reported through ``log`` (one line each) and skipped. A valid file of
        another run raises :class:`ForeignCheckpoint`.
        """
        log = log or (lambda message: print(message, file=sys.stderr))
        problems = []
        for index, path in enumerate((self.path, self.previous_path)):
            if not path.is_file():
                continue
            try:
                state, run_id = decode(path.read_bytes(), map_location)
            except CorruptCheckpoint as error:
                problems.append(f"{path.name}: {error}")
                log(f"genbench: warning: {path} is unusable ({error}); "
                    + ("trying the previous checkpoint" if index == 0 else "starting this run over"))
                continue
            if run_id is not None and run_id != self.run_id:
                raise ForeignCheckpoint(
                    f"{path} belongs to run {run_id}, not {self.run_id} (another model or config); "
                    "move it away or re-run with --fresh")
            self._current_trusted = index == 0
            if index == 1:
                log(f"genbench: warning: resuming {self.path.parent.name} from {path.name} "
                    f"(step {state['step']})")
            return state
        return None

    def verify(self) -> bool:
        """True when ``checkpoint.pt`` itself is valid (a finished run's final weights)."""
        try:
            _, run_id = decode(self.path.read_bytes(), "cpu")
        except (OSError, CorruptCheckpoint):
            return False
        return run_id in (None, self.run_id)

    def save(self, state: dict[str, Any]) -> None:
        data = encode(state, self.run_id)
        try:
            if self._current_trusted and self.path.is_file():
                os.replace(self.path, self.previous_path)
            write_bytes(self.path, data)
        except OSError as error:
            if error.errno == errno.ENOSPC:
                raise GenbenchError(f"disk full while writing {self.path}; the previous checkpoint "
                                    f"({self.previous_path.name}) is kept: free space and re-run "
                                    "the same command to resume") from None
            raise GenbenchError(f"cannot write {self.path}: {error.strerror}") from None
        self._current_trusted = True


def load_checkpoint(path: str | Path, map_location=None) -> dict[str, Any]:
    """The state saved in one checkpoint file (checksum verified)."""
    try:
        return decode(Path(path).read_bytes(), map_location)[0]
    except CorruptCheckpoint as error:
        raise GenbenchError(f"{path} is unusable ({error})") from None
