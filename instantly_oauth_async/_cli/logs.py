"""How the library's log reaches a terminal: ``-v`` at INFO, ``-vv`` at DEBUG, on whatever
stderr is at each write; ``--log-format json`` makes each record one JSON object per line with
its structured fields."""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any

#: A LogRecord's own attributes; anything else on a record came through ``extra=``.
_RECORD_FIELDS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}


class _Stderr:
    """Whatever ``sys.stderr`` is at each write: rich's live view swaps it for a proxy that
    prints above the view, so log lines and the view do not garble each other."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``,
    ``message``, then the record's structured fields (``iox_event``, ``operation``, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update((key, value) for key, value in vars(record).items()
                   if key not in _RECORD_FIELDS and not key.startswith("_"))
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(verbosity: int, log_format: str) -> None:
    """``-v``: the library's records at INFO on stderr; ``-vv``: at DEBUG. None without."""
    if verbosity <= 0:
        return
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    library = logging.getLogger("instantly_oauth_async")
    library.addHandler(handler)
    library.setLevel(logging.INFO if verbosity == 1 else logging.DEBUG)
