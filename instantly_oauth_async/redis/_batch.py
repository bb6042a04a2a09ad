"""Every script step of one Redis client in as few round trips as it takes: while one batch is on
its way, the steps asked for meanwhile queue, and the next EVALSHA carries all of them.

No awaited step waits for a timer: a step alone goes at once, as it would unbatched; steps only
share a trip when they would otherwise have queued behind one another. Steps go in the order they
were asked for, each answered as if it had run alone (an error reply is that step's only). On
Redis Cluster a batch must stay in one slot, so steps are queued apart by their keys' hash tag.

A step nobody waits for (the release of a slot once its request has ended, a breaker's record of
a success that changes nothing) is *posted*: it rides on the next trip of its lane, or goes on
its own when it is due (within a few milliseconds) if none comes. A release sent late only
keeps its slot spent a little longer, which no server window can notice; so under load, where
trips follow one another closely, such steps cost no round trip of their own.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import logging
from collections.abc import Callable, Sequence
from typing import Any

import anyio
import attrs
from redis.asyncio import RedisCluster
from redis.exceptions import ResponseError

from . import _lua as _redis_lua

__all__ = ["Batcher"]

logger = logging.getLogger("instantly_oauth_async")

#: The most steps one trip carries (a Lua script runs alone on the server: keep each short).
LIMIT = 64
#: How long a posted step waits for a trip to ride on before it goes alone (seconds).
LINGER = 0.001


@attrs.define(eq=False)
class _Step:
    name: str
    keys: list[str]
    args: list[str]
    done: bool = False
    reply: Any = None
    error: Exception | None = None
    posted: bool = False
    due: float = 0.0  #: a posted step's latest departure (the event loop's time)
    #: a posted step's arguments made as it leaves (say, how long ago its request ended)
    late: Callable[[], Sequence[str]] | None = None


@attrs.define(eq=False)
class _Lane:
    """The steps of one hash tag: those queued, and whether a trip is out."""

    tag: str
    queued: list[_Step] = attrs.Factory(list)
    busy: bool = False
    turn: anyio.Event = attrs.Factory(anyio.Event)
    timer: asyncio.TimerHandle | None = None
    timer_at: float = 0.0


def hash_tag(key: str) -> str:
    """The part of ``key`` Redis Cluster hashes (between the first ``{`` and the next ``}``)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1:end]
    return key


class Batcher:
    """Runs the steps of ``_redis_lua`` on ``client``, coalesced into one EVALSHA a trip."""

    def __init__(self, client: Any, *, limit: int = LIMIT) -> None:
        # On Redis Cluster the registry's steps publish with SPUBLISH, in their own slot.
        cluster = isinstance(client, RedisCluster)
        self._script = client.register_script(
            _redis_lua.BATCH_SHARDED if cluster else _redis_lua.BATCH)
        self._limit = limit
        self._lanes: dict[str, _Lane] = {}
        self._flushes: set[asyncio.Task[None]] = set()
        #: EVALSHA round trips sent
        self.round_trips = 0
        #: steps run, by script
        self.steps: collections.Counter[str] = collections.Counter()

    async def run(self, name: str, keys: Sequence[str], args: Sequence[str]) -> Any:
        """One step's reply; raises what Redis raised for its trip, or its own error reply.

        A caller cancelled before its step was sent takes it out of the queue; once sent, the
        step runs to its end on the server whatever happens to the caller (as any command does).
        """
        lane = self._lane(keys)
        step = _Step(name, list(keys), list(args))
        lane.queued.append(step)
        try:
            while not step.done:
                if lane.busy:
                    await lane.turn.wait()
                    continue
                lane.busy = True
                batch, lane.queued = lane.queued[:self._limit], lane.queued[self._limit:]
                # The trip is a task of its own: an asyncio cancellation of this caller (which
                # anyio's shield does not stop) must not cut short a trip carrying the steps of
                # other callers, who would then wait for an answer that never comes.
                trip = asyncio.get_running_loop().create_task(self._trip(lane, batch))
                self._flushes.add(trip)
                trip.add_done_callback(self._flushes.discard)
                with anyio.CancelScope(shield=True):
                    await asyncio.shield(trip)
        finally:
            if not step.done and step in lane.queued:
                lane.queued.remove(step)
        if step.error is not None:
            raise step.error
        return step.reply

    def post(self, name: str, keys: Sequence[str],
             args: Sequence[str] | Callable[[], Sequence[str]], *, within: float = LINGER
             ) -> None:
        """Queue a step nobody waits for: it goes with the lane's next trip, at the latest after
        ``within`` seconds. ``args`` may be a function, called as the step leaves. Its error, if
        any, is logged; an outage loses it (a release then comes back by its hold, as for a
        crashed holder)."""
        lane = self._lane(keys)
        due = asyncio.get_running_loop().time() + within
        if callable(args):
            step = _Step(name, list(keys), [], posted=True, due=due, late=args)
        else:
            step = _Step(name, list(keys), list(args), posted=True, due=due)
        lane.queued.append(step)
        if not lane.busy:
            self._later(lane)

    def _lane(self, keys: Sequence[str]) -> _Lane:
        tag = hash_tag(keys[0]) if keys else ""
        lane = self._lanes.get(tag)
        if lane is None:
            lane = self._lanes[tag] = _Lane(tag)
        return lane

    def _later(self, lane: _Lane) -> None:
        """Send what the lane holds when its first posted step is due, unless a trip has taken
        it by then."""
        due = min((step.due for step in lane.queued if step.posted), default=None)
        if due is None or (lane.timer is not None and lane.timer_at <= due):
            return
        if lane.timer is not None:
            lane.timer.cancel()
        lane.timer_at = due
        lane.timer = asyncio.get_running_loop().call_at(due, self._kick, lane)

    def _done(self, lane: _Lane) -> None:
        """A trip is back: the lane's next caller may send; posted steps left go when due."""
        lane.busy = False
        lane.turn.set()
        lane.turn = anyio.Event()
        if lane.queued:
            self._later(lane)

    def _kick(self, lane: _Lane) -> None:
        lane.timer = None
        if lane.queued and not lane.busy:
            task = asyncio.get_running_loop().create_task(self._flush(lane))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, lane: _Lane) -> None:
        """Send what a lane holds, as a caller of :meth:`run` would (posted steps only wait
        for this when no awaited step came to carry them)."""
        while lane.queued and not lane.busy:
            lane.busy = True
            batch, lane.queued = lane.queued[:self._limit], lane.queued[self._limit:]
            await self._trip(lane, batch)

    async def _trip(self, lane: _Lane, batch: list[_Step]) -> None:
        try:
            await self._send(batch)
        finally:
            self._done(lane)

    async def aclose(self) -> None:
        """Send what is still queued (posted releases), once; a lane with a trip out first waits
        for it (what was posted meanwhile would otherwise go after the client is closed)."""
        for lane in list(self._lanes.values()):
            while lane.queued or lane.busy:
                if lane.busy:
                    await lane.turn.wait()
                else:
                    await self._flush(lane)

    async def _send(self, batch: list[_Step]) -> None:
        keys: list[str] = []
        args = [str(len(batch))]
        for step in batch:
            if step.late is not None:
                step.args = list(step.late())
            keys += step.keys
            args += [step.name, str(len(step.keys)), str(len(step.args)), *step.args]
            self.steps[step.name] += 1
        self.round_trips += 1
        if all(step.posted for step in batch):
            self.steps["(posted alone)"] += 1
        try:
            replies = _check_shape(await self._script(keys=keys, args=args), len(batch))
        except Exception as exc:  # noqa: BLE001 - each step's caller sorts it (outage or not)
            if type(exc) is ResponseError and "user_script:" in str(exc):
                exc = ResponseError(_redis_lua.locate(str(exc)))  # the file and line it names
            for i, step in enumerate(batch):
                step.error, step.done = exc if i == 0 else _twin(exc), True
            if any(step.posted for step in batch):
                logger.debug("Redis lost %d posted steps (%s)",
                             sum(step.posted for step in batch), type(exc).__name__)
            return
        for step, reply in zip(batch, replies, strict=True):
            if isinstance(reply, list) and len(reply) == 2 and reply[0] == b"!err":
                step.error = ResponseError(
                    _redis_lua.locate(reply[1].decode(errors="replace"), step.name))
                if step.posted:
                    logger.warning("Redis refused a posted %s step: %s", step.name,
                                   step.error)
            else:
                step.reply = reply
            step.done = True


def _twin(exc: Exception) -> Exception:
    """``exc`` as an instance of its own, for one more step of a failed trip: one instance raised
    in many tasks would gather every task's traceback (and context) onto itself."""
    try:
        twin = copy.copy(exc)
    except Exception:  # noqa: BLE001 - an exception that cannot be copied is shared, as before
        return exc
    twin.__cause__, twin.__context__ = exc.__cause__, exc.__context__
    twin.__suppress_context__ = exc.__suppress_context__
    return twin.with_traceback(exc.__traceback__)


def _check_shape(replies: Any, steps: int) -> list[Any]:
    if not isinstance(replies, list) or len(replies) != steps:
        raise ResponseError(f"ERR a batch of {steps} steps got an answer of another shape")
    return replies
