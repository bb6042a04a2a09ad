"""The FastAPI example as the multi-worker tests serve it: ``uvicorn tests._webflow_apps:app``
(``--workers N`` too). The example's own ``make_app``, configured by the environment as the
example is (INSTANTLY_API_KEY, INSTANTLY_BASE_URL, INSTANTLY_STORE), with what only a test
needs: compressed leases and polls, and each answer marked with the PID of the worker process
that served it (``X-Worker``)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable

from fastapi import Request, Response

from examples.fastapi_app import make_app

app = make_app(poll_interval=0.1, session_lease=1.5, status_timeout=0.3)


@app.middleware("http")
async def worker_pid(request: Request, call_next: Callable[[Request], Awaitable[Response]]
                     ) -> Response:
    response = await call_next(request)
    response.headers["X-Worker"] = str(os.getpid())
    return response
