"""The simulator enforces the documented rules (manual clock: no test here depends on timing,
but the network delay, which only checks a lower bound)."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import anyio
import pytest

from instantly_oauth_async import (
    BreakerPolicy,
    OAuthManager,
    RateLimit,
    RetryPolicy,
    SystemClock,
)
from instantly_oauth_async._wire.convert import parse_datetime
from instantly_oauth_async.testing import FakeClock, Network, Simulator, SimulatorLimits

pytestmark = pytest.mark.anyio


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def msim(clock: ManualClock) -> AsyncIterator[Simulator]:
    limits = SimulatorLimits(init_per_workspace=5, init_per_ip=8, api_per_second=1000,
                             abuse_threshold=3, session_ttl=600)
    async with Simulator(limits=limits, clock=clock, trust_forwarded_for=True) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def call(http: aiohttp.ClientSession, sim: Simulator, key: str, method: str, path: str,
               *, ip: str = "10.1.1.1") -> tuple[int, dict[str, str], Any]:
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-For": ip}
    async with http.request(method, sim.url + path, headers=headers,
                            allow_redirects=False) as r:
        body = await r.json(content_type=None) if r.content_type == "application/json" else None
        return r.status, dict(r.headers), body


async def init(http: aiohttp.ClientSession, sim: Simulator, key: str, provider: str = "google",
               ip: str = "10.1.1.1") -> tuple[int, dict[str, str], Any]:
    return await call(http, sim, key, "POST", f"/api/v2/oauth/{provider}/init", ip=ip)


async def test_workspace_init_limit_per_sliding_window(msim: Simulator, clock: ManualClock,
                                                       http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    for i in range(5):
        clock.now += 10
        assert (await init(http, msim, key))[0] == 200, i
    status, headers, body = await init(http, msim, key)
    assert status == 429
    assert body["statusCode"] == 429 and body["error"] == "Too Many Requests"
    assert int(headers["Retry-After"]) == 20  # the first of the five leaves the window at +60
    clock.now += 19.5
    assert (await init(http, msim, key))[0] == 429
    clock.now += 0.6
    assert (await init(http, msim, key))[0] == 200


async def test_init_limits_are_per_provider(msim: Simulator, http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    for _ in range(5):
        assert (await init(http, msim, key, "google"))[0] == 200
    assert (await init(http, msim, key, "google"))[0] == 429
    assert (await init(http, msim, key, "microsoft"))[0] == 200


async def test_ip_limit_is_shared_by_workspaces(msim: Simulator, http: aiohttp.ClientSession
                                                ) -> None:
    a, b = msim.add_workspace("a").api_key, msim.add_workspace("b").api_key
    for _ in range(5):
        assert (await init(http, msim, a))[0] == 200
    for _ in range(3):
        assert (await init(http, msim, b))[0] == 200
    assert (await init(http, msim, b))[0] == 429  # b has used 3 of 5, but the IP 8 of 8
    assert (await init(http, msim, b, ip="10.2.2.2"))[0] == 200  # another IP is fine


async def test_abuse_earns_escalating_blocks(msim: Simulator, clock: ManualClock,
                                             http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    blocks = []
    for _ in range(3):
        for _ in range(5):
            await init(http, msim, key)
        for _ in range(3):  # abuse_threshold rejections inside one window
            status, headers, _ = await init(http, msim, key)
            assert status == 429
        blocks.append(int(headers["Retry-After"]))
        clock.now += 100
        status, headers, _ = await init(http, msim, key)
        assert status == 429 and int(headers["Retry-After"]) == blocks[-1] - 100
        clock.now += blocks[-1]
    assert blocks == [1800, 7200, 86400]


async def test_outage_answers_503_then_recovers(msim: Simulator, clock: ManualClock,
                                                http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    msim.outage("microsoft", seconds=30)
    status, _, body = await init(http, msim, key, "microsoft")
    assert status == 503 and body["error"] == "Service Unavailable"
    assert (await init(http, msim, key, "google"))[0] == 200
    clock.now += 31
    assert (await init(http, msim, key, "microsoft"))[0] == 200


@pytest.mark.parametrize("origin", [-1e7, 0.0])
async def test_a_clock_reading_negative_blocks_nothing(
    http: aiohttp.ClientSession, origin: float
) -> None:
    """No block and no outage was ever set: whatever the clock reads, an init gets through."""
    clock = ManualClock()
    clock.now = origin
    async with Simulator(clock=clock) as sim:
        key = sim.add_workspace().api_key
        assert (await init(http, sim, key))[0] == 200


async def test_sessions_expire_after_ttl(msim: Simulator, clock: ManualClock,
                                         http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    _, _, body = await init(http, msim, key)
    sid = body["session_id"]
    clock.now += 599
    assert (await call(http, msim, key, "GET", f"/api/v2/oauth/session/status/{sid}"))[2] == {
        "status": "pending"}
    clock.now += 1
    _, _, status = await call(http, msim, key, "GET", f"/api/v2/oauth/session/status/{sid}")
    assert status["status"] == "expired"
    with pytest.raises(ValueError, match="expired"):
        msim.complete(sid, "ann@acme.io")
    async with http.get(body["auth_url"]) as page:
        assert page.status == 410


async def test_error_session_is_deleted_after_first_read(msim: Simulator,
                                                         http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    sid = (await init(http, msim, key))[2]["session_id"]
    msim.deny(sid)
    path = f"/api/v2/oauth/session/status/{sid}"
    first = await call(http, msim, key, "GET", path)
    assert first[2] == {"status": "error", "error": "access_denied",
                        "error_description": "User denied access to the application"}
    assert (await call(http, msim, key, "GET", path))[0] == 404


async def test_google_rejects_personal_gmail(msim: Simulator, http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    sid = (await init(http, msim, key, "google"))[2]["session_id"]
    session = msim.complete(sid, "someone@gmail.com")
    assert session.state == "error"
    assert session.error_description == "Non GSuite accounts are not allowed"
    assert "someone@gmail.com" not in msim.accounts


async def test_mailbox_of_another_workspace_is_account_exists(
    msim: Simulator, http: aiohttp.ClientSession
) -> None:
    a, b = msim.add_workspace("a").api_key, msim.add_workspace("b").api_key
    msim.complete((await init(http, msim, a))[2]["session_id"], "ann@acme.io")
    session = msim.complete((await init(http, msim, b))[2]["session_id"], "ann@acme.io")
    assert session.error == "account_exists"
    again = msim.complete((await init(http, msim, a, "microsoft"))[2]["session_id"],
                          "ann@acme.io")
    assert again.state == "success"  # reconnecting to its own workspace is fine


async def test_standard_limit_per_second(clock: ManualClock, http: aiohttp.ClientSession) -> None:
    async with Simulator(limits=SimulatorLimits(api_per_second=3, api_per_minute=5),
                         clock=clock) as s:
        key = s.add_workspace().api_key
        codes = [(await call(http, s, key, "GET", "/api/v2/oauth/session/status/x"))[0]
                 for _ in range(4)]
        assert codes == [404, 404, 404, 429]
        clock.now += 1
        codes = [(await call(http, s, key, "GET", "/api/v2/oauth/session/status/x"))[0]
                 for _ in range(3)]
        assert codes == [404, 404, 429]  # now the per-minute window (5) is the one that binds


async def test_consent_page_form_connects_the_mailbox(msim: Simulator,
                                                      http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    body = (await init(http, msim, key, "microsoft"))[2]
    async with http.get(body["auth_url"]) as page:
        html = await page.text()
    assert '<form method="post">' in html and 'value="allow"' in html
    async with http.post(body["auth_url"], data={"email": "bo@corp.io", "name": "Bo Chen",
                                                 "action": "allow"}) as done:
        assert "Connected bo@corp.io" in await done.text()
    path = f"/api/v2/oauth/session/status/{body['session_id']}"
    assert (await call(http, msim, key, "GET", path))[2] == {
        "status": "success", "email": "bo@corp.io", "name": "Bo Chen"}
    _, _, account = await call(http, msim, key, "GET", "/api/v2/accounts/bo@corp.io")
    assert account["provider_code"] == 3 and account["first_name"] == "Bo"


async def test_consent_page_deny(msim: Simulator, http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    body = (await init(http, msim, key))[2]
    async with http.post(body["auth_url"], data={"action": "deny"}) as done:
        assert "denied" in await done.text()
    assert msim.sessions[body["session_id"]].error == "access_denied"


async def test_date_header_follows_the_servers_skewed_clock(http: aiohttp.ClientSession) -> None:
    async with Simulator(wall_skew=-3600) as s:
        key = s.add_workspace().api_key
        _, headers, body = await init(http, s, key)
    date = parsedate_to_datetime(headers["Date"])
    lifetime = (parse_datetime(body["expires_at"]) - date).total_seconds()
    assert 599 <= lifetime <= 601
    assert (datetime.now(timezone.utc) - date).total_seconds() > 3500


async def test_request_log_never_stores_the_key(msim: Simulator,
                                                http: aiohttp.ClientSession) -> None:
    key = msim.add_workspace().api_key
    await init(http, msim, key)
    assert msim.requests[-1].had_authorization
    assert key not in repr(msim.requests)


async def test_the_network_delays_each_request_on_its_way_in_and_out(
    http: aiohttp.ClientSession,
) -> None:
    async with Simulator(network=Network(latency=0.05)) as sim:
        workspace = sim.add_workspace()
        sent = time.monotonic()
        status, _, _ = await init(http, sim, workspace.api_key)
        answered = time.monotonic()
    assert status == 200
    seen = sim.requests[0].at  # the server's clock is time.monotonic here
    assert seen - sent >= 0.05  # it saw the request only after the inbound leg
    assert answered - seen >= 0.05  # and its answer took the outbound leg


def test_network_delays_must_be_non_negative() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        Network(jitter=-0.01)


def test_manager_limits_mirror_the_rules_compressed_or_not() -> None:
    limits = SimulatorLimits().compressed(10).manager_limits(status_share=1)
    assert limits["init_limit"] == RateLimit(75, per=6.0)
    assert limits["ip_init_limit"] == RateLimit(150, per=6.0)
    assert limits["standard_limit"] == (RateLimit(100, per=0.1), RateLimit(6000, per=6.0))
    assert limits["status_limit"] == limits["standard_limit"]
    half = SimulatorLimits().manager_limits()["status_limit"]
    assert half == (RateLimit(50, per=1.0), RateLimit(3000, per=60.0))


# -- one clock for the simulator and the manager; compressed limits compress the manager too ------

def test_manager_limits_of_real_time_are_the_managers_own_defaults() -> None:
    defaults = inspect.signature(OAuthManager.__init__).parameters
    limits = SimulatorLimits().manager_limits()
    timed = ("poll_interval", "expiry_grace", "start_timeout", "max_block_wait", "breaker",
             "retry")
    assert {name: limits[name] for name in timed} == {
        name: defaults[name].default for name in timed}
    assert limits["init_limit"] == defaults["init_limit"].default
    assert limits["standard_limit"] == defaults["standard_limit"].default


def test_compressed_limits_compress_every_duration_the_manager_waits() -> None:
    limits = SimulatorLimits().compressed(6).compressed(10)  # 60 times faster, in two steps
    assert limits.time_scale == 60
    kwargs = limits.manager_limits()
    assert kwargs["poll_interval"] == pytest.approx(5.0 / 60)
    assert kwargs["expiry_grace"] == pytest.approx(1.0)
    assert kwargs["start_timeout"] == pytest.approx(10.0)
    assert kwargs["max_block_wait"] == pytest.approx(2.0)
    breaker, retry = kwargs["breaker"], kwargs["retry"]
    assert isinstance(breaker, BreakerPolicy) and isinstance(retry, RetryPolicy)
    assert (breaker.failure_threshold, breaker.cooldown, breaker.max_cooldown,
            breaker.probe_timeout) == pytest.approx((3, 5.0 / 60, 5.0, 1.0))
    assert (retry.attempts, retry.base, retry.cap) == pytest.approx((5, 0.5 / 60, 0.5))
    # the I/O bounds and the fleet's lease stay the manager's: loopback is not compressed
    assert not {"request_timeout", "status_timeout", "session_lease", "retention"} & set(kwargs)


def test_manager_limits_take_overrides_of_any_manager_argument() -> None:
    kwargs = SimulatorLimits().compressed(60).manager_limits(poll_interval=0.01,
                                                             fetch_account=False)
    assert kwargs["poll_interval"] == 0.01 and kwargs["fetch_account"] is False
    assert kwargs["expiry_grace"] == pytest.approx(1.0)


@pytest.mark.parametrize("factor", [0, -2, math.inf, math.nan])
def test_compressing_by_a_factor_that_is_not_a_positive_number_is_refused(factor: float) -> None:
    with pytest.raises(ValueError, match="positive, finite"):
        SimulatorLimits().compressed(factor)


@pytest.mark.timing
async def test_a_compressed_simulator_and_its_manager_limits_end_one_session_in_well_under_a_second(
) -> None:
    async with Simulator(limits=SimulatorLimits().compressed(60)) as sim:
        key = sim.add_workspace().api_key
        began = time.monotonic()
        async with OAuthManager(key, base_url=sim.url, **sim.limits.manager_limits()) as manager:
            pending = await manager.start("google")
            await sim.wait_for(lambda: any(r.kind == "status" for r in sim.requests))
            sim.complete(pending.session.session_id, "ann@acme.io")
            with anyio.fail_after(5):
                result = await pending
            took = time.monotonic() - began
    reads = [r.at for r in sim.requests if r.kind == "status"]
    print(f"one session, start to ConnectResult with its account: {took * 1000:.0f} ms, "
          f"{len(reads)} status reads")
    assert result.ok and result.account is not None
    assert reads[-1] - reads[0] < 1.0  # polled at the compressed interval, not every 5 s
    assert took < 1.0


@pytest.mark.parametrize("make", [FakeClock, SystemClock, lambda: time.monotonic])
async def test_the_simulator_takes_a_clock_as_the_manager_does_or_a_callable(
    make: Callable[[], Any], http: aiohttp.ClientSession,
) -> None:
    clock = make()
    async with Simulator(clock=clock) as sim:
        reading = clock.monotonic() if hasattr(clock, "monotonic") else clock()
        assert reading <= sim.clock() < reading + 60
        key = sim.add_workspace().api_key
        assert (await init(http, sim, key))[0] == 200


async def test_a_fake_clock_shared_by_the_simulator_and_the_manager_moves_both(
    http: aiohttp.ClientSession,
) -> None:
    clock = FakeClock(1000.0)
    async with Simulator(clock=clock, limits=SimulatorLimits(session_ttl=60.0)) as sim:
        key = sim.add_workspace().api_key
        async with OAuthManager(key, base_url=sim.url, clock=clock, **sim.limits.manager_limits(
                poll_interval=5.0)) as manager:
            pending = await manager.start("google")
            sim.complete(pending.session.session_id, "ann@acme.io")
            await anyio.wait_all_tasks_blocked()
            assert [r.kind for r in sim.requests] == ["init"]  # no poll before its time comes
            await clock.jump(5.0)
            with anyio.fail_after(5):
                assert (await pending).ok
        # the server's sessions live by the same clock: this one is expired 60 s on
        _, _, body = await init(http, sim, key)
        clock.advance(60.0)
        status, _, answer = await call(
            http, sim, key, "GET", f"/api/v2/oauth/session/status/{body['session_id']}")
    assert status == 200 and answer["status"] == "expired"


@pytest.mark.parametrize("clock", [5, "soon", object()])
def test_a_clock_that_is_neither_a_clock_nor_callable_is_a_type_error(clock: Any) -> None:
    with pytest.raises(TypeError, match="clock must be a Clock"):
        Simulator(clock=clock)
