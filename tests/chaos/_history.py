"""The history: JSON lines, one file per worker incarnation (and one for the nemesis), each line
flushed to the kernel as it is written, so a SIGKILL loses nothing already recorded.

Every line has ``t`` (``time.monotonic()``: CLOCK_MONOTONIC, the same in every process of the
host, and the simulator's clock too), ``w`` (the worker's name), ``inc`` (its incarnation) and
``ev`` (what happened), then the event's own fields.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, TextIO

Event = dict[str, Any]


class History:
    """The writer of one incarnation's file."""

    def __init__(self, path: Path, worker: str, incarnation: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file: TextIO = path.open("a", encoding="utf-8")
        self.worker = worker
        self.incarnation = incarnation

    def record(self, ev: str, **fields: Any) -> None:
        line = {"t": time.monotonic(), "w": self.worker, "inc": self.incarnation, "ev": ev,
                **fields}
        self._file.write(json.dumps(line) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Tail:
    """Reads every ``*.jsonl`` under a folder as it grows: only whole lines (a writer may be
    in the middle of one), each once."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._offsets: dict[Path, int] = {}
        self.events: list[Event] = []

    def poll(self) -> list[Event]:
        """The events written since the last call (also appended to :attr:`events`)."""
        new: list[Event] = []
        for path in sorted(self._folder.glob("*.jsonl")):
            offset = self._offsets.get(path, 0)
            with path.open("rb") as file:
                file.seek(offset)
                chunk = file.read()
            end = chunk.rfind(b"\n") + 1
            self._offsets[path] = offset + end
            new += [json.loads(line) for line in chunk[:end].splitlines() if line.strip()]
        self.events += new
        return new


def describe(exc: BaseException) -> dict[str, str]:
    """An exception as the history keeps it."""
    return {"exc": type(exc).__name__, "msg": str(exc)[:400]}
