"""Issue 12, items 9 to 14: the wire, the parse, the errors and ``start(timeout=0)``.

Every test talks HTTP over loopback to the simulator (or to an aiohttp app of its own); none waits
for time to pass: a ``FakeClock`` stands still unless told to move, so a call that should raise
at once and instead waits would hang into ``anyio.fail_after`` and fail.
"""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import zlib
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any, ClassVar

import aiohttp
import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from instantly_oauth_async import (
    APIError,
    CircuitOpenError,
    InstantlyClient,
    IPBlockedError,
    MalformedResponseError,
    MemoryStore,
    NotFoundError,
    OAuthManager,
    RateLimit,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    RetryPolicy,
    ServiceUnavailableError,
    SessionStatus,
    StartTimeoutError,
    UnauthorizedError,
)
from instantly_oauth_async._limits.breaker import BreakerPolicy, CircuitState
from instantly_oauth_async._wire.client import DEFAULT_MAX_BODY
from instantly_oauth_async._wire.convert import parse_datetime
from instantly_oauth_async._wire.exceptions import redact_url
from instantly_oauth_async._wire.sansio import decipher_response
from instantly_oauth_async.testing import (
    CannedResponse,
    FakeClock,
    Faults,
    Network,
    Simulator,
    Workspace,
)

pytestmark = pytest.mark.anyio

FACTOR = 20  # a 60 s window lasts 3 s: an ordinary 429 asks for at most 3 s
MiB = 1 << 20


MakeManager = Callable[..., OAuthManager]


@pytest.fixture
def make(csim: Simulator) -> MakeManager:
    def factory(**kwargs: Any) -> OAuthManager:
        options: dict[str, Any] = {
            "base_url": csim.url,
            "init_limit": RateLimit(75, per=60 / FACTOR),
            "ip_init_limit": RateLimit(150, per=60 / FACTOR),
            "poll_interval": 0.05,
            "seed": 1,
        }
        options.update(kwargs)
        if "clock" not in options:
            options.setdefault("store", MemoryStore())
        return OAuthManager(csim.add_workspace().api_key, **options)

    return factory


def inits(sim: Simulator) -> list[int]:
    return [r.status for r in sim.requests if r.kind == "init"]


# -- item 9: start(timeout=0) sends when it need not wait, and raises at once when it must ------


async def test_start_with_timeout_zero_sends_the_init_and_returns_a_session(
    csim: Simulator, make: MakeManager
) -> None:
    async with make() as manager:
        with anyio.fail_after(10):
            pending = await manager.start("google", timeout=0)
        assert pending.session.session_id in csim.sessions
    assert inits(csim) == [200]


async def test_start_with_timeout_zero_lets_a_slow_init_run_to_its_request_timeout() -> None:
    # The request takes 2 x 50 ms on the wire: a zero deadline must not cut it.
    async with Simulator(network=Network(latency=0.05)) as sim:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, base_url=sim.url, store=MemoryStore()) as manager:
            with anyio.fail_after(10):
                pending = await manager.start("microsoft", timeout=0)
        assert pending.session.session_id in sim.sessions


async def test_start_with_timeout_zero_raises_at_once_when_the_budget_is_spent(
    csim: Simulator, make: MakeManager
) -> None:
    clock = FakeClock()  # never moved: any wait would hang into fail_after
    async with make(clock=clock, init_limit=RateLimit(1, per=60)) as manager:
        with anyio.fail_after(10):
            await manager.start("google", timeout=0)
            with pytest.raises(StartTimeoutError):
                await manager.start("google", timeout=0)
            other = await manager.start("microsoft", timeout=0)  # its own budget
        assert clock.monotonic() == 0
    assert other.session.session_id
    assert inits(csim) == [200, 200]


async def test_start_with_timeout_zero_raises_at_once_into_a_block_or_an_open_circuit(
    csim: Simulator, make: MakeManager
) -> None:
    policy = BreakerPolicy(failure_threshold=1, cooldown=60)
    async with make(clock=FakeClock(), breaker=policy) as manager:
        with anyio.fail_after(10):
            csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "1800"),)))
            with pytest.raises(IPBlockedError):
                await manager.start("google", timeout=0)
            with pytest.raises(IPBlockedError):  # the block is known: nothing is sent
                await manager.start("google", timeout=0)
            csim.outage("microsoft", count=1)
            with pytest.raises(ServiceUnavailableError):
                await manager.start("microsoft", timeout=0)
            with pytest.raises(CircuitOpenError):
                await manager.start("microsoft", timeout=0)
    assert inits(csim) == [429, 503]


@pytest.mark.parametrize("origin", [-1e6, -300.0, 0.0, 1e9])
async def test_any_clock_origin_changes_nothing(
    csim: Simulator, make: MakeManager, origin: float
) -> None:
    """A monotonic clock's reference point is undefined: its readings may be negative (a host
    clock set back, a process that started it at an offset). Nothing may take "0" for "long
    ago": not the store's blocks, the breaker's cooldown, the first read of a session."""
    clock = FakeClock(origin)
    policy = BreakerPolicy(failure_threshold=1, cooldown=60)
    async with make(clock=clock, breaker=policy) as manager:
        with anyio.fail_after(10):
            pending = await manager.start("google", timeout=0)  # nothing blocked, circuit closed
            csim.complete(pending.session.session_id, "a@acme.io")
            while not pending.done():  # the poller's reads, each at its time on this clock
                await clock.jump(0.05)
            assert (await pending).status is SessionStatus.SUCCESS
            csim.outage("google", count=1)
            with pytest.raises(ServiceUnavailableError):
                await manager.start("google", timeout=0)
            with pytest.raises(CircuitOpenError):  # open for its cooldown, no longer
                await manager.start("google", timeout=0)
            await clock.jump(61)
            await manager.start("google", timeout=0)
    assert inits(csim) == [200, 503, 200]


# -- item 10: the body cap counts decoded bytes --------------------------------------------------


def gzip_of_zeros(size: int) -> bytes:
    """A gzip stream of ``size`` zero bytes, built a MiB at a time (about 1 KiB per MiB)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"\0" * MiB
    parts = [packer.compress(block) for _ in range(size // MiB)]
    return b"".join([*parts, packer.flush()])


class _Recorded(aiohttp.ClientResponse):
    """A real response that remembers itself, so the test can count what was decoded."""

    seen: ClassVar[list[aiohttp.ClientResponse]] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _Recorded.seen.append(self)


async def test_gzip_bomb_is_cut_off_once_the_decoded_bytes_pass_the_cap(
    sim: Simulator, workspace: Workspace
) -> None:
    bomb = gzip_of_zeros(64 * MiB)
    assert len(bomb) < DEFAULT_MAX_BODY // 8  # its Content-Length is far under the cap
    sim.enqueue("account", CannedResponse(200, bomb, (("Content-Encoding", "gzip"),)))
    _Recorded.seen.clear()
    async with aiohttp.ClientSession(response_class=_Recorded) as http, \
            InstantlyClient(workspace.api_key, base_url=sim.url, session=http) as client:
        with pytest.raises(ResponseTooLargeError) as info:
            await client.get_account("ann@acme.io")
    assert info.value.status == 200
    (response,) = _Recorded.seen
    decoded = response.content.total_bytes
    # The cap, then one 64 KiB read and what aiohttp decodes ahead of it (its 128 KiB buffer and
    # one 64 KiB step): 256 KiB past the cap as measured, against the whole 64 MiB before.
    assert DEFAULT_MAX_BODY < decoded <= DEFAULT_MAX_BODY + 6 * 64 * 1024, decoded


async def test_a_small_gzip_answer_still_parses(client: InstantlyClient, sim: Simulator) -> None:
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = packer.compress(b'{"status": "pending"}') + packer.flush()
    sim.enqueue("status", CannedResponse(200, body, (("Content-Encoding", "gzip"),)))
    assert (await client.get_oauth_status("abc")).status.value == "pending"


# -- item 11: an answer that came but cannot be read is not retried; timestamps on every Python --

UNREADABLE = json.dumps({"session_id": 5, "auth_url": "https://x", "expires_at": "2026-01-14"})


async def test_unreadable_init_answer_is_raised_at_once_and_not_retried(
    csim: Simulator, make: MakeManager
) -> None:
    for _ in range(5):
        csim.enqueue("init", CannedResponse(200, UNREADABLE))
    async with make(retry=RetryPolicy(attempts=5, base=0.01)) as manager:
        with pytest.raises(MalformedResponseError) as info:
            await manager.start("google")
        stats = manager.stats()
    assert inits(csim) == [200]  # one init spent, not five
    assert info.value.status == 200  # an answer that came, not one that was lost
    assert stats.requests["init"] == {200: 1}
    assert stats.breakers["google"] is CircuitState.CLOSED and stats.transitions == ()


async def test_init_answer_with_two_fraction_digits_parses_on_every_python(
    client: InstantlyClient, sim: Simulator
) -> None:
    body = {"session_id": "s1", "auth_url": "https://x", "expires_at": "2026-01-14T12:30:00.12Z"}
    sim.enqueue("init", CannedResponse(200, json.dumps(body)))
    session = await client.init_oauth("google")
    assert session.expires_at == datetime(2026, 1, 14, 12, 30, 0, 120000, tzinfo=timezone.utc)


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-01-14T12:30:00.12Z", datetime(2026, 1, 14, 12, 30, 0, 120000, tzinfo=timezone.utc)),
    ("2026-01-14T12:30:00.1234Z", datetime(2026, 1, 14, 12, 30, 0, 123400, tzinfo=timezone.utc)),
    ("2026-01-14T12:30:00+0000", datetime(2026, 1, 14, 12, 30, tzinfo=timezone.utc)),
    ("2026-01-14T12:30:00Z", datetime(2026, 1, 14, 12, 30, tzinfo=timezone.utc)),
    ("2026-01-14t12:30:00.000z", datetime(2026, 1, 14, 12, 30, tzinfo=timezone.utc)),
    ("2026-01-14 12:30:00.9999999-05:30",
     datetime(2026, 1, 14, 12, 30, 0, 999999, tzinfo=timezone(-timedelta(hours=5, minutes=30)))),
    ("2026-01-14T12:30", datetime(2026, 1, 14, 12, 30, tzinfo=timezone.utc)),
    ("2026-01-14", datetime(2026, 1, 14, tzinfo=timezone.utc)),
])
def test_timestamp_forms_the_api_may_send_parse_alike(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset()


@pytest.mark.parametrize("text", ["2026-01-14T12:30:00+24:00", "2026-01-14T12:30:00+05:61",
                                  "2026-13-01T00:00:00Z", "2026-01-14T25:00:00Z", "soon", ""])
def test_impossible_timestamps_are_value_errors(text: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the converter maps any to MalformedResponse
        parse_datetime(text)


def _offset_spellings(minutes: int) -> list[str]:
    sign = "-" if minutes < 0 else "+"
    hours, rest = divmod(abs(minutes), 60)
    spellings = [f"{sign}{hours:02d}:{rest:02d}", f"{sign}{hours:02d}{rest:02d}"]
    if rest == 0:
        spellings.append(f"{sign}{hours:02d}")
    if minutes == 0:
        spellings += ["Z", "z", "-00:00"]
    return spellings


@given(
    moment=st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(9998, 12, 31)),
    digits=st.integers(0, 12),
    extra=st.integers(0, 999_999),
    offset=st.integers(-(23 * 60 + 59), 23 * 60 + 59) | st.just(0),
    separator=st.sampled_from(["T", "t", " "]),
    data=st.data(),
)
def test_every_fraction_length_and_offset_spelling_parses_alike(  # noqa: PLR0917 - given
    moment: datetime, digits: int, extra: int, offset: int, separator: str, data: st.DataObject,
) -> None:
    spelling = data.draw(st.sampled_from(_offset_spellings(offset)))
    fraction = (f"{moment.microsecond:06d}" + f"{extra:06d}")[:digits]
    text = (f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}{separator}"
            f"{moment.hour:02d}:{moment.minute:02d}:{moment.second:02d}"
            f"{'.' + fraction if fraction else ''}{spelling}")
    zone = timezone(timedelta(minutes=offset))
    expected = moment.replace(microsecond=int(fraction[:6].ljust(6, "0") or 0), tzinfo=zone)
    parsed = parse_datetime(text)
    assert parsed == expected and parsed.utcoffset() == expected.utcoffset(), text
    if sys.version_info >= (3, 11) and separator != "t" and spelling != "z":
        assert parsed == datetime.fromisoformat(text)  # the same reading as 3.11's own


# -- item 12: a borrowed session that raises for status changes nothing --------------------------


@pytest.mark.parametrize(("canned", "expected"), [
    (CannedResponse(401, '{"statusCode":401,"error":"Unauthorized","message":"Invalid API key"}'),
     UnauthorizedError),
    (CannedResponse(429, "{}", (("Retry-After", "7"),)), RateLimitedError),
    (CannedResponse(503, "{}"), ServiceUnavailableError),
])
async def test_borrowed_session_that_raises_for_status_still_gives_typed_errors(
    sim: Simulator, workspace: Workspace, canned: CannedResponse, expected: type[APIError]
) -> None:
    sim.enqueue("init", canned)
    async with aiohttp.ClientSession(raise_for_status=True) as http, \
            InstantlyClient(workspace.api_key, base_url=sim.url, session=http) as client:
        with pytest.raises(expected) as info:
            await client.init_oauth("google")
    assert info.value.status == canned.status
    if isinstance(info.value, RateLimitedError):
        assert info.value.retry_after == 7


# -- item 13: an HTTP-date Retry-After is read on the server's clock ----------------------------


async def test_http_date_retry_after_is_measured_against_the_servers_date() -> None:
    async with Simulator(wall_skew=-300.0) as sim:  # the server's clock is 5 min behind ours
        workspace = sim.add_workspace()
        until = format_datetime(sim.now_wall() + timedelta(seconds=1800), usegmt=True)
        sim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", until),)))
        async with InstantlyClient(workspace.api_key, base_url=sim.url) as client:
            with pytest.raises(RateLimitedError) as info:
                await client.init_oauth("google")
    assert info.value.retry_after is not None
    assert 1799 <= info.value.retry_after <= 1800  # not 1,500: whole seconds on both headers


def test_retry_after_date_is_read_against_the_date_header_else_the_local_clock() -> None:
    now = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
    headers = {"Retry-After": "Mon, 23 Nov 2026 12:00:30 GMT"}
    with pytest.raises(RateLimitedError) as info:
        decipher_response(429, headers, b"", now=now)
    assert info.value.retry_after == 30
    headers["Date"] = "Mon, 23 Nov 2026 11:59:00 GMT"  # the server is a minute behind
    with pytest.raises(RateLimitedError) as info:
        decipher_response(429, headers, b"", now=now)
    assert info.value.retry_after == 90


# -- item 14: an ordinary 429 is not an IP block -------------------------------------------------


async def test_ordinary_429_longer_than_the_time_left_is_a_start_timeout_not_an_ip_block(
    csim: Simulator, make: MakeManager
) -> None:
    async with make(clock=FakeClock()) as manager:
        with anyio.fail_after(10):
            csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "3"),)))
            with pytest.raises(StartTimeoutError) as info:
                await manager.start("google", timeout=1)
            assert isinstance(info.value.__cause__, RateLimitedError)
            with pytest.raises(StartTimeoutError):  # the hold-back it left: raised at once too
                await manager.start("google", timeout=1)
            with pytest.raises(StartTimeoutError):
                await manager.start("google", timeout=0)
    assert not isinstance(info.value, IPBlockedError)
    assert inits(csim) == [429]


async def test_a_block_longer_than_the_time_left_is_an_ip_block(
    csim: Simulator, make: MakeManager
) -> None:
    async with make(clock=FakeClock()) as manager:
        with anyio.fail_after(10):
            csim.enqueue("init", CannedResponse(429, "{}", (("Retry-After", "60"),)))
            with pytest.raises(IPBlockedError) as info:  # 60 s > one 3 s window: a block
                await manager.start("google", timeout=10)
    assert info.value.retry_after == 60


# -- item 14: timeouts that are timeouts, errors that name their request ------------------------


@pytest.mark.parametrize("cls", [StartTimeoutError, RequestTimeoutError])
def test_timeout_errors_are_the_builtin_and_the_asyncio_timeout(cls: type[Exception]) -> None:
    assert issubclass(cls, TimeoutError)
    assert issubclass(cls, asyncio.TimeoutError)  # a class of its own on 3.10


async def test_a_request_timeout_is_caught_as_a_timeout(sim: Simulator,
                                                        workspace: Workspace) -> None:
    sim.faults = Faults(slow=1.0, slow_seconds=2.0)
    async with InstantlyClient(workspace.api_key, base_url=sim.url, timeout=0.1) as client:
        with pytest.raises(asyncio.TimeoutError):
            await client.get_oauth_status("x")
        with pytest.raises(TimeoutError):
            await client.get_oauth_status("x")


async def test_api_error_names_its_request_and_keeps_redacted_headers(
    client: InstantlyClient, sim: Simulator, workspace: Workspace
) -> None:
    key = workspace.api_key
    sim.enqueue("init", CannedResponse(429, "{}", (
        ("Retry-After", "5"), ("X-Request-Id", "r-1"), ("Set-Cookie", "sid=abc; Secure"),
        ("X-Echo", f"Bearer {key}"), ("Authorization", "Bearer elsewhere"))))
    with pytest.raises(RateLimitedError) as info:
        await client.init_oauth("google")
    error = info.value
    assert (error.method, error.url) == ("POST", f"{sim.url}/api/v2/oauth/google/init")
    assert error.headers["X-Request-Id"] == "r-1" and error.headers["retry-after"] == "5"
    assert error.headers["Set-Cookie"] == "<redacted>"
    assert error.headers["X-Echo"] == "<redacted>"  # any value holding the key
    assert error.headers["Authorization"] == "<redacted>"
    copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, just made
    assert (type(copy), copy.retry_after, copy.url, dict(copy.headers)) == (
        RateLimitedError, 5, error.url, dict(error.headers))
    for text in (str(error), repr(error), repr(vars(error)), repr(vars(copy))):
        assert key not in text and "sid=abc" not in text

    with pytest.raises(NotFoundError) as found:
        await client.get_account("ann+x@acme.io")
    assert found.value.method == "GET"
    assert found.value.url == f"{sim.url}/api/v2/accounts/ann%2Bx%40acme.io"


def test_error_urls_lose_credentials_query_values_and_fragment() -> None:
    assert redact_url("https://u:pw@api.example/a%2Fb?token=t0p&x=1#frag") == (
        "https://api.example/a%2Fb?token=redacted&x=redacted")
    assert redact_url(None) is None
