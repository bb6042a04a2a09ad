"""The client's fast paths (issue 26): a path segment that needs no encoding skips ``quote``
(one that does is still encoded exactly as before), and a request's log tag is made only when
its record is: the same record, never the session id or email."""

from __future__ import annotations

import logging
from urllib.parse import quote

import pytest

from instantly_oauth_async import InstantlyClient, NotFoundError
from instantly_oauth_async._wire import client as client_module
from instantly_oauth_async._wire.exceptions import log_tag
from instantly_oauth_async._wire.sansio import encode_segment
from instantly_oauth_async.testing import Simulator

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("value", [
    "sess_3f2a9c0b", "A-Z.a_z~09", "", "a b", "a/b", "a?b", "a#b", "a%b", "a+b", "a:b", "a@b",
    "ann.lee@acme.io", "é", "\uff41", "a\nb", "a\x00b", "\U0001f600", "a;b,c=d&e", "..", "~", "-",
])
def test_a_segment_is_encoded_as_quote_encodes_it(value: str) -> None:
    assert encode_segment(value) == quote(value, safe="")


def test_a_safe_segment_is_returned_as_it_is() -> None:
    value = "sess_3f2a9c0b-1d4e.x~y"
    assert encode_segment(value) is value


async def test_unsafe_characters_still_reach_the_server_encoded(client: InstantlyClient,
                                                                sim: Simulator) -> None:
    with pytest.raises(NotFoundError):
        await client.get_oauth_status("a b/é")
    assert sim.requests[-1].path == "/api/v2/oauth/session/status/a%20b%2F%C3%A9"


async def test_no_log_tag_is_made_while_nothing_is_logged(
    client: InstantlyClient, sim: Simulator, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    made: list[tuple[str, str]] = []

    def counting(kind: str, value: str) -> str:
        made.append((kind, value))
        return log_tag(kind, value)

    monkeypatch.setattr(client_module, "log_tag", counting)
    session = await client.init_oauth("google")
    caplog.set_level(logging.INFO, logger="instantly_oauth_async")
    await client.get_oauth_status(session.session_id)
    assert made == []  # DEBUG is off: no record, no tag
    caplog.set_level(logging.DEBUG, logger="instantly_oauth_async")
    await client.get_oauth_status(session.session_id)
    assert made == [("session", session.session_id)]
    (record,) = [r for r in caplog.records
                 if getattr(r, "iox_event", None) == "request_finished"]
    tag = log_tag("session", session.session_id)
    assert record.path == f"/api/v2/oauth/session/status/{tag}"  # type: ignore[attr-defined]
    texts = [record.getMessage(), *(str(v) for v in vars(record).values())]
    assert tag in record.getMessage()
    assert not [t for t in texts if session.session_id in t]


async def test_a_failed_read_logs_the_tag_not_the_email(
    client: InstantlyClient, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="instantly_oauth_async")
    with pytest.raises(NotFoundError):
        await client.get_account("nobody.here@acme.io")
    (record,) = [r for r in caplog.records
                 if getattr(r, "iox_event", None) == "request_finished"]
    assert record.path == "/api/v2/accounts/" + log_tag(  # type: ignore[attr-defined]
        "email", "nobody.here@acme.io")
    assert record.status == 404  # type: ignore[attr-defined]
    texts = [record.getMessage(), *(str(v) for v in vars(record).values())]
    assert not [t for t in texts if "nobody.here" in t]
