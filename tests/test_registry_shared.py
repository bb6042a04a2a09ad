"""The in-process registry's shared leases (issue 26): ``renew_owned`` renews every lease an
owner holds through one shared expiry, and behaves as the per-entry ``renew`` does, step for
step: the same leases renewed, the same ones lost, the same entries handed out after (claims,
releases, decisions, adoption and forgetting included)."""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import cast

import pytest

from instantly_oauth_async._stores.registry import ANSWER, LOST, MemoryRegistry
from instantly_oauth_async._stores.shared import Held
from instantly_oauth_async.testing import FakeClock

pytestmark = pytest.mark.anyio

NS = "ns"


class _Twin:
    """One registry renewed entry by entry, one through its shared leases; each owner's view
    of its leases kept as a manager keeps it."""

    def __init__(self) -> None:
        self.clocks = (FakeClock(100.0), FakeClock(100.0))
        self.each = MemoryRegistry(self.clocks[0])
        self.shared = MemoryRegistry(self.clocks[1])
        self.views: dict[str, dict[str, int]] = {"a": {}, "b": {}, "c": {}}

    def advance(self, seconds: float) -> None:
        for clock in self.clocks:
            clock.advance(seconds)

    async def same(self, sids: list[str]) -> None:
        for sid in sids:
            assert await self.each.get(NS, sid) == await self.shared.get(NS, sid), sid
        assert await self.each.orphans(NS, limit=1000) == \
            await self.shared.orphans(NS, limit=1000)
        assert len(self.each) == len(self.shared)

    async def register(self, sid: str, owner: str, lease: float, retention: float) -> None:
        one = await self.each.register(NS, sid, "d", owner=owner, lease=lease,
                                       retention=retention)
        two = await self.shared.register(NS, sid, "d", owner=owner, lease=lease,
                                         retention=retention)
        assert one == two
        if one.owner == owner and not one.decided:
            self.views[owner][sid] = one.fence

    async def claim(self, sid: str, owner: str, lease: float) -> None:
        one = await self.each.claim(NS, sid, owner, lease=lease)
        assert one == await self.shared.claim(NS, sid, owner, lease=lease)
        if one is not None:
            self.views[owner][sid] = one.fence

    async def renew(self, owner: str, lease: float) -> None:
        view = self.views[owner]
        lost = await self.each.renew(NS, owner, dict(view), lease=lease)
        assert sorted(await self.shared.renew_owned(NS, owner, view, lease=lease)) == \
            sorted(lost)
        for sid in lost:
            del view[sid]

    async def decide(self, sid: str, owner: str | None, rank: int) -> None:
        fence = None if owner is None else self.views[owner].get(sid, 99)
        one = await self.each.decide(NS, sid, "{}", rank, fence=fence, retention=30)
        assert one == await self.shared.decide(NS, sid, "{}", rank, fence=fence, retention=30)
        if owner is not None:
            self.views[owner].pop(sid, None)

    async def release(self, sid: str, owner: str) -> None:
        fences = {sid: self.views[owner].pop(sid, 1)}
        await self.each.release(NS, owner, fences)
        await self.shared.release(NS, owner, fences)


@pytest.mark.parametrize("seed", range(12))
async def test_renew_owned_does_what_renewing_each_entry_does(seed: int) -> None:
    rng = random.Random(seed)  # noqa: S311 - a reproducible sequence, no secret
    twin = _Twin()
    sids = [f"s{i}" for i in range(24)]
    owners = list(twin.views)
    for _ in range(600):
        sid, owner = rng.choice(sids), rng.choice(owners)
        lease = rng.choice((15.0, 15.0, 15.0, 4.0, 30.0))
        op = rng.random()
        if op < 0.25:
            await twin.register(sid, owner, lease, rng.choice((60.0, 600.0)))
        elif op < 0.4:
            await twin.claim(sid, owner, lease)
        elif op < 0.6:
            await twin.renew(owner, lease)
        elif op < 0.68:
            await twin.decide(sid, rng.choice((owner, None)), rng.choice((LOST, ANSWER)))
        elif op < 0.76:
            await twin.release(sid, owner)
        elif op < 0.8:
            twin.views[owner].pop(sid, None)  # a view that forgot one it still holds
        elif op < 0.84:
            if twin.views[owner]:  # a view with a stale fence
                stale = rng.choice(list(twin.views[owner]))
                twin.views[owner][stale] -= 1
        else:
            twin.advance(rng.choice((0.5, 1.0, 3.0, 5.0, 9.0, 16.0)))
        await twin.same(sids)


async def _renewed_together(reg: MemoryRegistry, sids: Iterable[str], *,
                            retention: float = 600) -> dict[str, int]:
    """``sids`` registered by owner "a" (lease 15 s) and renewed together, none lost: the
    owner's view, each id with its fence."""
    view = {sid: (await reg.register(NS, sid, "d", owner="a", lease=15,
                                     retention=retention)).fence for sid in sids}
    assert await reg.renew_owned(NS, "a", view, lease=15) == []
    return view


async def test_a_steady_heartbeat_looks_at_no_entry() -> None:
    """Once renewed together, the next renews look at nothing (no entry touched): one expiry
    moved; a session registered, decided or claimed since is all they look at."""
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = await _renewed_together(reg, (f"s{i}" for i in range(50)))
    shared = reg._shared[(NS, "a")]
    assert (shared.count, shared.check, shared.until) == (50, [], 115.0)

    def everything(*args: object) -> list[str]:
        raise AssertionError("looked at every entry")

    setattr(reg, "_renew_all", everything)  # noqa: B010 - an instance's own, removed below
    for _ in range(3):
        clock.advance(5)
        assert await reg.renew_owned(NS, "a", view, lease=15) == []
    assert shared.until == 130.0
    entry = await reg.get(NS, "s7")
    assert entry is not None and entry.lease_until == 130.0
    view["new"] = (await reg.register(NS, "new", "d", owner="a", lease=15, retention=600)).fence
    await reg.decide(NS, "s3", "{}", ANSWER, fence=view.pop("s3"), retention=60)
    await reg.release(NS, "a", {"s4": view.pop("s4")})
    clock.advance(5)
    claimed = await reg.claim(NS, "s4", "b", lease=15)
    assert claimed is not None
    assert await reg.renew_owned(NS, "a", view, lease=15) == []
    assert (shared.count, shared.check) == (49, [])
    delattr(reg, "_renew_all")  # the class's own again
    view["s4"] = 1  # a view naming one it lost unnoticed: the count tells, every entry looked at
    assert await reg.renew_owned(NS, "a", view, lease=15) == ["s4"]
    assert reg._shared[(NS, "a")].count == 49


async def test_a_lapsed_shared_lease_renews_nothing_and_is_adopted() -> None:
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = await _renewed_together(reg, ("s1", "s2"))
    clock.advance(10)
    late = (await reg.register(NS, "s3", "d", owner="a", lease=15, retention=600)).fence
    clock.advance(6)  # the shared lease ran out at 115; s3's own at 125
    assert sorted(await reg.orphans(NS)) == ["s1", "s2"]
    assert await reg.claim(NS, "s1", "b", lease=15) is not None
    view["s3"] = late
    assert sorted(await reg.renew_owned(NS, "a", view, lease=15)) == ["s1", "s2"]
    s2, s3 = await reg.get(NS, "s2"), await reg.get(NS, "s3")
    assert s2 is not None and s2.lease_until == 115.0  # lapsed: not renewed
    assert s3 is not None and s3.lease_until == 131.0
    assert await reg.orphans(NS) == ["s2"]


async def test_a_shorter_renew_of_some_leases_is_kept_short() -> None:
    """A closing manager shortens the leases of its reads in flight (``renew`` with the read
    margin): the shared expiry does not stretch them again, and the others' is not touched."""
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = await _renewed_together(reg, ("s1", "s2"))
    assert await reg.renew(NS, "a", {"s1": view["s1"]}, lease=2) == []
    s1, s2 = await reg.get(NS, "s1"), await reg.get(NS, "s2")
    assert s1 is not None and s1.lease_until == 102.0
    assert s2 is not None and s2.lease_until == 115.0
    assert await reg.renew_owned(NS, "a", {"s2": view["s2"]}, lease=15) == []
    clock.advance(3)
    assert await reg.orphans(NS) == ["s1"]
    await reg.release(NS, "a", {"s1": view["s1"], "s2": view["s2"]})
    assert reg._shared == {}  # nothing attached: nothing kept for the owner


async def test_an_adoption_pass_looks_only_at_leases_on_no_shared_one() -> None:
    """After a heartbeat every lease held is on its owner's shared lease: an adoption pass
    looks at the few others (released, registered since), and at a shared lease that lapsed."""
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = {f"s{i}": (await reg.register(NS, f"s{i}", "d", owner="a", lease=15,
                                         retention=600)).fence for i in range(20)}
    assert set(reg._loose[NS]) == set(view)
    assert await reg.renew_owned(NS, "a", view, lease=15) == []
    assert reg._loose == {}
    await reg.release(NS, "a", {"s5": view.pop("s5")})
    await reg.register(NS, "b1", "d", owner="b", lease=15, retention=600)
    assert set(reg._loose[NS]) == {"s5", "b1"}
    assert await reg.orphans(NS) == ["s5"]
    clock.advance(16)  # a's heartbeat is late: all of its leases lapsed, and b's
    assert await reg.orphans(NS) == sorted(["b1", "s5", *view])  # (created at once: by id)
    claimed = await reg.claim(NS, "s7", "b", lease=15)
    assert claimed is not None and claimed.fence == 2
    assert "s7" in reg._loose[NS] and "s7" not in await reg.orphans(NS)


class _Looked(dict[str, Held]):
    """A namespace's entries in a registry, noting the id of every one a step looks up: what a
    renew or an adoption pass costs."""

    def __init__(self) -> None:
        super().__init__()
        self.looked: list[str] = []

    def get(self, key: str, default: Held | None = None) -> Held | None:  # type: ignore[override]
        self.looked.append(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> Held:
        self.looked.append(key)
        return super().__getitem__(key)


async def _renewed(reg: MemoryRegistry, owner: str, view: dict[str, int]
                   ) -> tuple[list[str], list[str]]:
    """What a renew of ``owner``'s leases lost, and the ids of the entries it looked at."""
    entries = cast("_Looked", reg._entries[NS])
    entries.looked.clear()
    lost = await reg.renew_owned(NS, owner, view, lease=15)
    return sorted(lost), sorted(set(entries.looked))


async def test_a_renew_looks_at_what_changed_and_at_nothing_else() -> None:
    """Each change since the last renew costs the next one a look at that entry, no more; a
    change that leaves the lease as it was (registered again by its owner) costs nothing, and
    one owner's renew never costs another's."""
    reg = MemoryRegistry(FakeClock(100.0))
    reg._entries[NS] = _Looked()  # the namespace's entries
    a = {f"a{i}": (await reg.register(NS, f"a{i}", "d", owner="a", lease=15,
                                      retention=600)).fence for i in range(8)}
    b = {f"b{i}": (await reg.register(NS, f"b{i}", "d", owner="b", lease=15,
                                      retention=600)).fence for i in range(4)}
    # A first renew looks at its owner's leases, not at the other owners'.
    assert await _renewed(reg, "a", a) == ([], sorted(a))
    assert await _renewed(reg, "b", b) == ([], sorted(b))
    assert await _renewed(reg, "a", a) == ([], [])
    # Registered again by its owner while on the shared lease: nothing changed.
    again = await reg.register(NS, "a3", "d", owner="a", lease=15, retention=600)
    assert again.fence == a["a3"]
    assert await _renewed(reg, "a", a) == ([], [])
    # Another owner's released lease claimed: that one looked at.
    await reg.release(NS, "b", {"b0": b.pop("b0")})
    assert await _renewed(reg, "b", b) == ([], [])
    claimed = await reg.claim(NS, "b0", "a", lease=15)
    assert claimed is not None
    a["b0"] = claimed.fence
    assert await _renewed(reg, "a", a) == ([], ["b0"])
    # One let go (decided by its owner) and then one registered: the new one looked at.
    await reg.decide(NS, "a5", "{}", ANSWER, fence=a.pop("a5"), retention=600)
    a["a8"] = (await reg.register(NS, "a8", "d", owner="a", lease=15, retention=600)).fence
    assert await _renewed(reg, "a", a) == ([], ["a8"])
    # Decided by another manager while its owner still names it: lost, and only it looked at.
    await reg.decide(NS, "a6", "{}", LOST, fence=None, retention=600)
    assert await _renewed(reg, "a", a) == (["a6"], ["a6"])
    del a["a6"]
    assert await _renewed(reg, "a", a) == ([], [])
    # A stale fence in a's view: a's renew looks at every lease of its own, b's still at none.
    a["a7"] -= 1
    lost, looked = await _renewed(reg, "a", a)
    assert lost == ["a7"] and set(looked) >= set(a)
    del a["a7"]
    assert await _renewed(reg, "b", b) == ([], [])
    assert await _renewed(reg, "a", a) == ([], [])
    # One left out of a renew (off the shared lease, still a's), then registered again by a,
    # which holds it again: that one looked at.
    fence = a.pop("a1")
    assert (await _renewed(reg, "a", a))[0] == []
    again = await reg.register(NS, "a1", "d", owner="a", lease=15, retention=600)
    assert (again.owner, again.fence) == ("a", fence)
    a["a1"] = fence
    assert await _renewed(reg, "a", a) == ([], ["a1"])
    assert await _renewed(reg, "a", a) == ([], [])


async def test_a_lease_left_out_of_its_owners_renew_is_let_lapse() -> None:
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = await _renewed_together(reg, ("s1", "s2"))
    assert reg._loose == {}
    clock.advance(5)
    assert await reg.renew_owned(NS, "a", {"s2": view["s2"]}, lease=15) == []
    s1, s2 = await reg.get(NS, "s1"), await reg.get(NS, "s2")
    assert s1 is not None and s1.lease_until == 115.0  # kept as it stood, not renewed
    assert s2 is not None and s2.lease_until == 120.0
    clock.advance(10)
    assert await reg.orphans(NS) == ["s1"]


async def test_what_leaves_a_shared_lease_leaves_nothing_behind() -> None:
    """Decided, claimed, forgotten or renewed away: once nothing is held, the registry keeps no
    shared lease and no entry to look through for anyone (a long-running process holds what
    its retention asks for, and an adoption pass looks through no leftovers)."""
    clock = FakeClock(100.0)
    reg = MemoryRegistry(clock)
    view = await _renewed_together(reg, ("s1", "s2", "s3", "s4"), retention=30)
    await reg.decide(NS, "s1", "{}", ANSWER, fence=view.pop("s1"), retention=600)
    again = await reg.claim(NS, "s2", "a", lease=15)  # its owner holds it again
    assert again is not None
    view["s2"] = again.fence
    assert await reg.renew_owned(NS, "a", view, lease=15) == []
    await reg.decide(NS, "s2", "{}", ANSWER, fence=view.pop("s2"), retention=600)
    for _ in range(2):
        clock.advance(10)
        assert await reg.renew_owned(NS, "a", view, lease=15) == []
    clock.advance(10)  # s3 and s4 forgotten, on the shared lease
    assert sorted(await reg.renew_owned(NS, "a", view, lease=15)) == ["s3", "s4"]
    assert len(reg) == 2
    fence = (await reg.register(NS, "b1", "d", owner="b", lease=15, retention=600)).fence
    assert await reg.renew_owned(NS, "b", {"b1": fence}, lease=15) == []
    assert await reg.renew_owned(NS, "b", {"b1": fence + 1}, lease=15) == ["b1"]
    assert (NS, "b") not in reg._shared  # nothing kept on it
    await reg.decide(NS, "b1", "{}", LOST, fence=None, retention=600)
    # An owner that never renews (closed before its first heartbeat) leaves nothing either.
    fence = (await reg.register(NS, "c1", "d", owner="c", lease=15, retention=600)).fence
    await reg.release(NS, "c", {"c1": fence})
    await reg.decide(NS, "c1", "{}", LOST, fence=None, retention=600)
    assert (reg._open, reg._loose, reg._shared) == ({}, {}, {})
