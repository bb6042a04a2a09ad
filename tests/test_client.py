"""InstantlyClient over loopback HTTP against the simulator."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from instantly_oauth_async import (
    ClientStateError,
    ConfigurationError,
    ForbiddenError,
    InstantlyClient,
    InstantlyError,
    MalformedResponseError,
    NotFoundError,
    PaymentRequiredError,
    Provider,
    RateLimitedError,
    RequestTimeoutError,
    ResponseTooLargeError,
    ServerError,
    ServiceUnavailableError,
    SessionStatus,
    TransportError,
    UnauthorizedError,
    __version__,
)
from instantly_oauth_async._wire.exceptions import redact_url
from instantly_oauth_async.testing import CannedResponse, Faults, Simulator, Workspace

pytestmark = pytest.mark.anyio


async def test_init_returns_a_session_for_the_provider(client: InstantlyClient, sim: Simulator
                                                       ) -> None:
    session = await client.init_oauth(Provider.MICROSOFT)
    assert session.provider is Provider.MICROSOFT
    assert session.auth_url.startswith(sim.url)
    assert session.expires_at.tzinfo is not None
    assert session.server_date is not None
    assert sim.sessions[session.session_id].provider == "microsoft"


async def test_provider_may_be_given_as_its_string_value(client: InstantlyClient) -> None:
    session = await client.init_oauth("google")
    assert session.provider is Provider.GOOGLE


async def test_unknown_provider_is_a_configuration_error(client: InstantlyClient,
                                                         sim: Simulator) -> None:
    with pytest.raises(ConfigurationError, match="provider"):
        await client.init_oauth("yahoo")
    assert sim.requests == []


async def test_full_flow_pending_success_then_consumed(client: InstantlyClient,
                                                       sim: Simulator) -> None:
    session = await client.init_oauth("google")
    assert (await client.get_oauth_status(session.session_id)).status is SessionStatus.PENDING
    sim.complete(session.session_id, "ann@acme.io", "Ann Lee")
    status = await client.get_oauth_status(session.session_id)
    assert (status.status, status.email, status.name) == (SessionStatus.SUCCESS, "ann@acme.io",
                                                          "Ann Lee")
    with pytest.raises(NotFoundError):
        await client.get_oauth_status(session.session_id)
    account = await client.get_account("ann@acme.io")
    assert account.email == "ann@acme.io" and account.first_name == "Ann"


async def test_requests_carry_bearer_key_and_library_user_agent(
    client: InstantlyClient, sim: Simulator, workspace: Workspace
) -> None:
    await client.init_oauth("google")
    logged = sim.requests[-1]
    assert logged.had_authorization
    assert logged.workspace_id == workspace.workspace_id  # the bearer key matched this workspace
    assert logged.user_agent is not None
    assert logged.user_agent.startswith(f"instantly-oauth-async/{__version__} ")


@pytest.mark.parametrize("email", ["ann+tag@acme.io", "we/ird?#%@acme.io", "o'neil@acme.io"])
async def test_path_parameters_arrive_as_one_segment(client: InstantlyClient, sim: Simulator,
                                                     email: str) -> None:
    session = await client.init_oauth("microsoft")
    sim.complete(session.session_id, email)
    assert (await client.get_oauth_status(session.session_id)).email == email
    account = await client.get_account(email)
    assert account.email == email
    assert "/" not in sim.requests[-1].path.rsplit("/accounts/", 1)[1]


async def test_session_id_with_reserved_characters_is_encoded(client: InstantlyClient,
                                                              sim: Simulator) -> None:
    with pytest.raises(NotFoundError):
        await client.get_oauth_status("a/b?c#d%e+f")
    assert sim.requests[-1].path == "/api/v2/oauth/session/status/a%2Fb%3Fc%23d%25e%2Bf"


async def test_bad_key_is_unauthorized(sim: Simulator) -> None:
    async with InstantlyClient("not-a-key", base_url=sim.url) as c:
        with pytest.raises(UnauthorizedError) as info:
            await c.init_oauth("google")
    assert info.value.status == 401 and info.value.message == "Invalid API key"


async def test_revoked_key_is_unauthorized(client: InstantlyClient, sim: Simulator,
                                           workspace: Workspace) -> None:
    sim.revoke(workspace)
    with pytest.raises(UnauthorizedError):
        await client.get_oauth_status("x")


async def test_missing_scope_is_forbidden(sim: Simulator) -> None:
    reader = sim.add_workspace("reader", scopes=["accounts:read"])
    async with InstantlyClient(reader.api_key, base_url=sim.url) as c:
        with pytest.raises(ForbiddenError, match="accounts:create"):
            await c.init_oauth("google")


async def test_unpaid_workspace_gets_payment_required(sim: Simulator) -> None:
    unpaid = sim.add_workspace("free", paid=False)
    async with InstantlyClient(unpaid.api_key, base_url=sim.url) as c:
        with pytest.raises(PaymentRequiredError):
            await c.get_account("ann@acme.io")


async def test_another_workspaces_session_is_not_found(client: InstantlyClient,
                                                       sim: Simulator) -> None:
    other = sim.add_workspace("other")
    async with InstantlyClient(other.api_key, base_url=sim.url) as c:
        foreign = await c.init_oauth("google")
    with pytest.raises(NotFoundError):
        await client.get_oauth_status(foreign.session_id)


async def test_429_carries_retry_after(client: InstantlyClient, sim: Simulator) -> None:
    sim.enqueue("init", CannedResponse(429, '{"statusCode":429,"error":"Too Many Requests",'
                                            '"message":"slow down"}', (("Retry-After", "42"),)))
    with pytest.raises(RateLimitedError) as info:
        await client.init_oauth("google")
    assert info.value.retry_after == 42 and info.value.message == "slow down"


async def test_503_during_outage(client: InstantlyClient, sim: Simulator) -> None:
    sim.outage("google", count=1)
    with pytest.raises(ServiceUnavailableError) as info:
        await client.init_oauth("google")
    assert info.value.status == 503
    await client.init_oauth("google")


async def test_html_proxy_page_maps_to_server_error(client: InstantlyClient,
                                                    sim: Simulator) -> None:
    sim.enqueue("status", CannedResponse(502, "<html>Bad Gateway</html>",
                                         content_type="text/html"))
    with pytest.raises(ServerError) as info:
        await client.get_oauth_status("x")
    assert info.value.status == 502


async def test_non_json_success_is_malformed(client: InstantlyClient, sim: Simulator) -> None:
    sim.enqueue("init", CannedResponse(200, "<html>hello</html>", content_type="text/html"))
    with pytest.raises(MalformedResponseError):
        await client.init_oauth("google")


async def test_init_without_session_id_is_malformed(client: InstantlyClient,
                                                    sim: Simulator) -> None:
    sim.enqueue("init", CannedResponse(200, '{"auth_url": "https://x", '
                                            '"expires_at": "2026-01-01T00:00:00Z"}'))
    with pytest.raises(MalformedResponseError, match="session_id"):
        await client.init_oauth("google")


async def test_oversized_body_is_an_error_not_a_memory_spike(client: InstantlyClient,
                                                             sim: Simulator) -> None:
    sim.enqueue("account", CannedResponse(200, b"[" + b"1," * (10 * 1024 * 1024) + b"1]"))
    with pytest.raises(ResponseTooLargeError):
        await client.get_account("ann@acme.io")


async def test_oversized_chunked_body_is_cut_off() -> None:
    async def huge(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for _ in range(40):
            await response.write(b" " * (512 * 1024))
        return response

    app = web.Application()
    app.router.add_get("/api/v2/accounts/{email}", huge)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with InstantlyClient("k", base_url=f"http://127.0.0.1:{port}") as c:
            with pytest.raises(ResponseTooLargeError):
                await c.get_account("a@b.c")
    finally:
        await runner.cleanup()


async def test_connection_refused_is_a_transport_error_not_sent() -> None:
    async with InstantlyClient("k", base_url="http://127.0.0.1:9") as c:
        with pytest.raises(TransportError) as info:
            await c.init_oauth("google")
    assert info.value.maybe_sent is False


async def test_reset_connection_is_a_transport_error(client: InstantlyClient,
                                                     sim: Simulator) -> None:
    sim.faults = Faults(reset_before=1.0)
    with pytest.raises(TransportError):
        await client.init_oauth("google")


async def test_truncated_body_is_a_transport_error(client: InstantlyClient,
                                                   sim: Simulator) -> None:
    sim.faults = Faults(truncated=1.0)
    with pytest.raises(TransportError):
        await client.init_oauth("google")


async def test_slow_answer_times_out(sim: Simulator, workspace: Workspace) -> None:
    sim.faults = Faults(slow=1.0, slow_seconds=2.0)
    async with InstantlyClient(workspace.api_key, base_url=sim.url, timeout=0.2) as c:
        with pytest.raises(RequestTimeoutError):
            await c.get_oauth_status("x")


async def test_per_call_timeout_overrides_the_default(sim: Simulator,
                                                      workspace: Workspace) -> None:
    sim.faults = Faults(slow=1.0, slow_seconds=0.3)
    async with InstantlyClient(workspace.api_key, base_url=sim.url, timeout=0.05) as c:
        with pytest.raises(NotFoundError):  # answered, slowly: the 5 s per-call timeout held
            await c.get_oauth_status("x", timeout=5)


@pytest.mark.parametrize("url", ["http://api.instantly.ai", "http://10.0.0.1:8080",
                                 "ftp://127.0.0.1", "not a url", "https://u:p@host.example",
                                 "https://host.example/?q=1", "https://h:port", "https://h:99999",
                                 "https://h:0", "http://127.0.0.1:0"])
def test_unsafe_or_odd_base_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigurationError):
        InstantlyClient("k", base_url=url)


@pytest.mark.parametrize(("url", "shown"), [
    ("https://h:port/x?token=s3cret#f", "https://h:port/x"), ("https://h:99999/?k=v", "https://h:99999/"),
    ("https://u:pw@h:-1/", "https://h:-1/"), ("u:pw@h:-1?k=v", "<redacted>")])
def test_a_url_yarl_cannot_take_apart_is_cut_by_hand(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize("url", ["http://127.0.0.1:8080", "http://localhost:1", "http://[::1]:80",
                                 "https://api.instantly.ai/"])
def test_https_and_loopback_http_are_accepted(url: str) -> None:
    InstantlyClient("k", base_url=url)


@pytest.mark.parametrize("key", ["", "   ", "a\nb", None, 5])
def test_bad_api_keys_are_refused(key: object) -> None:
    with pytest.raises(ConfigurationError):
        InstantlyClient(key, base_url="http://127.0.0.1:1")  # type: ignore[arg-type]


@pytest.fixture
async def other_host() -> AsyncIterator[tuple[str, list[web.Request]]]:
    seen: list[web.Request] = []

    async def record(request: web.Request) -> web.Response:
        seen.append(request)
        return web.json_response({"status": "pending"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.2", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.2:{port}", seen
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("prefix", ["", "/", "/gateway", "/gate%20way/v1/"])
async def test_a_base_url_path_is_kept_before_every_request_path(
    other_host: tuple[str, list[web.Request]], workspace: Workspace, prefix: str,
) -> None:
    """An API behind a gateway that mounts it under a path: every request goes below it, its
    own segments encoded once (the URL is built from the base, not parsed from a string)."""
    target, seen = other_host
    async with InstantlyClient(workspace.api_key, base_url=target + prefix) as client:
        await client.get_oauth_status("a/b c")
    mount = prefix.rstrip("/")
    assert [r.raw_path for r in seen] == [f"{mount}/api/v2/oauth/session/status/a%2Fb%20c"]


async def test_redirect_to_another_host_never_carries_the_key(
    client: InstantlyClient, sim: Simulator, other_host: tuple[str, list[web.Request]]
) -> None:
    target, seen = other_host
    sim.redirect_all(target)
    with pytest.raises(MalformedResponseError, match="redirect"):
        await client.get_oauth_status("abc")
    assert all("Authorization" not in r.headers for r in seen)
    assert seen == []


async def test_borrowed_session_is_left_open(sim: Simulator, workspace: Workspace) -> None:
    async with aiohttp.ClientSession() as http:
        async with InstantlyClient(workspace.api_key, base_url=sim.url, session=http) as c:
            await c.init_oauth("google")
        assert not http.closed


async def test_closed_client_refuses_work(sim: Simulator, workspace: Workspace) -> None:
    c = InstantlyClient(workspace.api_key, base_url=sim.url)
    await c.init_oauth("google")
    await c.aclose()
    await c.aclose()
    with pytest.raises(ClientStateError):
        await c.init_oauth("google")


def test_unclosed_client_warns() -> None:
    c = InstantlyClient("k", base_url="http://127.0.0.1:1")
    c._state = c._state.__class__.OPENED  # as if a request had opened its own session
    with pytest.warns(ResourceWarning, match="unclosed"):
        c.__del__()
    c._state = c._state.__class__.CLOSED  # so the real finaliser stays quiet


def _texts(exc: BaseException) -> list[str]:
    out: list[str] = []
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        out += [str(e), repr(e), repr(e.args), repr(vars(e)) if hasattr(e, "__dict__") else ""]
        stack += [e.__cause__, e.__context__]
    return out


async def test_api_key_never_appears_in_reprs_logs_or_exceptions(
    sim: Simulator, workspace: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    key = workspace.api_key
    caplog.set_level(logging.DEBUG)
    errors: list[BaseException] = []
    async with InstantlyClient(key, base_url=sim.url, timeout=0.3) as c:
        texts = [repr(c), str(c)]
        await c.init_oauth("google")
        for fault in (Faults(reset_before=1.0), Faults(truncated=1.0),
                      Faults(slow=1.0, slow_seconds=1.0), Faults(server_error=1.0)):
            sim.faults = fault
            try:
                await c.init_oauth("google")
            except InstantlyError as exc:
                errors.append(exc)
        sim.faults = Faults()
        sim.revoke(workspace)
        try:
            await c.get_account("a@b.c")
        except InstantlyError as exc:
            errors.append(exc)
    async with InstantlyClient(key, base_url="http://127.0.0.1:9") as c:
        try:
            await c.get_oauth_status("x")
        except InstantlyError as exc:
            errors.append(exc)
    assert len(errors) == 6
    for error in errors:
        texts += _texts(error)
    texts += [r.getMessage() for r in caplog.records]
    assert caplog.records, "DEBUG logging produced nothing to check"
    assert not [t for t in texts if key in t]


async def test_a_read_lost_on_a_reused_connection_is_sent_once(client: InstantlyClient,
                                                                sim: Simulator) -> None:
    """aiohttp resends an idempotent request by itself when a reused keep-alive connection
    drops; the server then sees two reads on one slot of the budget, and the second one finds
    the one-time answer gone. The library sends each request once and reports the failure."""
    session = await client.init_oauth("google")
    assert (await client.get_oauth_status(session.session_id)).status.value == "pending"
    sim.complete(session.session_id, "ann@acme.io")
    sim.faults = Faults(reset_after=1.0, kinds=frozenset({"status"}))
    with pytest.raises(TransportError):
        await client.get_oauth_status(session.session_id)  # on the connection reused
    reads = [r for r in sim.requests if r.kind == "status"]
    assert [r.outcome for r in reads] == ["", "acted-then-reset"]
