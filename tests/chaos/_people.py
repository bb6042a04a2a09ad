"""The people on the consent pages, inside the simulator's process: each session that appears
gets one person, whose plan is drawn from the run's seed and the session's rank of creation.

What each person did, and when (the server's clock), is the run's ground truth: it is recorded
in the same step of the server's event loop as the change it makes, so no status read can fall
between the two.
"""

from __future__ import annotations

import random
from typing import Any

import anyio
import anyio.abc
import attrs

from instantly_oauth_async.testing import Simulator

#: plan: share of sessions
PLANS = (("allow", 0.55), ("deny", 0.2), ("never", 0.2), ("late", 0.05))


@attrs.define
class Person:
    sid: str
    rank: int
    created: float
    expires: float
    plan: str
    delay: float
    hint: str | None = None  #: the expected_email its worker started the session with
    acted: float | None = None  #: when the server took the person's answer
    state: str | None = None  #: "success" or "error": the server's state after it
    email: str | None = None
    refused: str | None = None  #: why the server refused the answer (a late person)


class People:
    def __init__(self, sim: Simulator, seed: int, ttl: float) -> None:
        self._sim = sim
        self._seed = seed
        self._ttl = ttl
        self.people: dict[str, Person] = {}
        self.hints: dict[str, str] = {}

    def hint(self, sid: str, email: str) -> None:
        """The worker that started ``sid`` asked for ``email``: the person will likely use it."""
        self.hints[sid] = email
        if sid in self.people:
            self.people[sid].hint = email

    async def run(self) -> None:
        """Until cancelled: a person for every new session, acting on their own time."""
        async with anyio.create_task_group() as group:
            while True:  # wakes on every request the server logs (an init among them)
                await self._sim.wait_for(lambda: bool(self._sim.sessions.keys() - self.people))
                new = sorted(self._sim.sessions.keys() - self.people.keys(),
                             key=lambda sid: self._sim.sessions[sid].created)
                for sid in new:
                    self._arrive(sid, group)

    def _arrive(self, sid: str, group: anyio.abc.TaskGroup) -> None:
        session = self._sim.sessions[sid]
        rank = len(self.people)
        rng = random.Random(f"{self._seed}:{rank}")  # noqa: S311 - a seeded script
        roll, plan = rng.random(), "never"
        for name, share in PLANS:
            if roll < share:
                plan = name
                break
            roll -= share
        delay = self._ttl + 0.5 if plan == "late" else rng.uniform(0.3, 0.7 * self._ttl)
        person = Person(sid, rank, session.created, session.expires, plan, delay,
                        hint=self.hints.get(sid))
        self.people[sid] = person
        if plan != "never":
            group.start_soon(self._act, person, rng)

    async def _act(self, person: Person, rng: random.Random) -> None:
        await anyio.sleep(person.delay)
        sim = self._sim
        try:
            if person.plan == "deny":
                session = sim.deny(person.sid)
            else:
                email = person.hint or f"{person.sid[:12]}@chaos.io"
                if person.hint and rng.random() < 0.1:
                    email = f"other-{person.sid[:10]}@chaos.io"  # another mailbox than asked
                person.email = email
                session = sim.complete(person.sid, email)
        except (KeyError, ValueError) as exc:  # expired, or gone
            person.refused = str(exc)
            person.email = None
            return
        person.acted = sim.clock()
        person.state = session.state

    def truth(self) -> list[dict[str, Any]]:
        return [attrs.asdict(person) for person in self.people.values()]
