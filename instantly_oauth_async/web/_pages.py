"""What the connect flow's browser gets: its pages (HTML) and its server-sent events, and
nothing else: no session id, no secret, only what the person may see."""

from __future__ import annotations

import html
import json
from typing import Any, Final

__all__ = ["EXPIRED_PAGE", "KEEPALIVE", "NOT_FOUND_PAGE", "RECONNECT", "result_event",
           "result_page"]

NOT_FOUND_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>No such session</title></head>
<body><h1>No such session</h1>
<p id="not-found">This link names no session of yours: it may be mistyped, belong to someone
else, or have ended long ago. Connect again from the start page.</p>
</body></html>
"""

EXPIRED_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Link expired</title></head>
<body><h1>Link expired</h1>
<p id="expired">This link has expired. Connect again from the start page.</p>
</body></html>
"""

RESULT_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Connecting a mailbox</title></head>
<body>
  <h1>Connecting a mailbox</h1>
  <p id="result" aria-live="polite">{text}</p>
  <script>
    const stream = location.pathname.replace(/\\/result\\/([^/]*)$/, "/events/$1")
      + location.search;
    if ({waiting}) {{
      const events = new EventSource(stream);  // this worker or, when it goes, another
      events.addEventListener("result", (event) => {{
        const r = JSON.parse(event.data);
        result.textContent = r.ok ? `Connected ${{r.email}}` : `Not connected: ${{r.reason}}`;
        events.close();
      }});
    }}
  </script>
</body></html>
"""
WAITING: Final = "Waiting for you to allow access..."

#: The stream's first line: a stream cut short (its worker stops or dies) is opened again by the
#: browser after this many milliseconds, on whichever worker then answers.
RECONNECT: Final = b"retry: 1000\n\n"
#: A comment sent while the session is pending, so proxies keep the stream open.
KEEPALIVE: Final = b": keepalive\n\n"


def shown(payload: dict[str, Any]) -> str:
    """The outcome in words."""
    return f"Connected {payload['email']}" if payload["ok"] else \
        f"Not connected: {payload['reason']}"


def result_page(payload: dict[str, Any] | None) -> str:
    """The result page: the outcome, or (``None``: pending) a page that waits for it on the
    event stream."""
    if payload is None:
        return RESULT_PAGE.format(text=html.escape(WAITING), waiting="true")
    return RESULT_PAGE.format(text=html.escape(shown(payload)), waiting="false")


def result_event(payload: dict[str, Any]) -> bytes:
    """The one ``result`` event of a stream."""
    return f"event: result\ndata: {json.dumps(payload)}\n\n".encode()
