"""The Lua scripts behind ``RedisStore``, read from the ``.lua`` files in ``lua/`` (package data).

Each decision is one step, in a file of its own whose header says its KEYS, its ARGV and what
it returns: ``take.lua``, ``release.lua``, ``reg_decide.lua``... ``clock.lua``, ``breaker.lua``
and ``registry.lua`` hold what several steps share; a line ``-- include NAME.lua`` puts one of
them in. ``batch.lua`` is the one script Redis runs: its line ``-- include-steps`` becomes one
function per step, so a trip carries any list of steps (see ``_redis_batch``).

Redis names a line of a failing script ``user_script:N``, N counting lines of the whole batch;
:func:`locate` turns that into the step file and its line (``take.lua:12``).

Every step reads the time from Redis ``TIME`` (so the hosts' clocks never matter); the last ARGV
of each may override it, which only the tests do, to compare the scripts step for step with the
pure Python functions in ``_limiter`` and ``_breaker``. Numbers go back as strings: a Lua number
returned as a Redis reply is truncated to an integer.
"""

from __future__ import annotations

import re
from importlib import resources
from typing import Final

import attrs

__all__ = ["BATCH", "BATCH_SHARDED", "STEPS", "Script", "locate", "sharded", "step"]

#: The steps ``batch.lua`` carries, each from the file of its name in lower case.
STEPS: Final = ("TAKE", "LEAVE", "RELEASE", "REPLAY", "BLOCK", "BLOCKED_FOR", "BREAKER_ADMIT",
                "BREAKER_RECORD", "BREAKER_RELEASE", "REG_REGISTER", "REG_GET", "REG_CLAIM",
                "REG_RENEW", "REG_RELEASE", "REG_DECIDE", "REG_ORPHANS")
_INCLUDE: Final = re.compile(r"^-- include ([a-z_]+\.lua)$")
_LINE: Final = re.compile(r"user_script:(\d+)")


@attrs.frozen
class Script:
    """A script's text, and where each of its lines comes from: ``origins[i]`` is the file and
    line of line ``i + 1``."""

    text: str
    origins: tuple[tuple[str, int], ...]

    def __add__(self, other: Script) -> Script:
        return Script(self.text + other.text, self.origins + other.origins)


def _lines(text: str, origin: str) -> Script:
    """``text`` (whole lines, each ending in a newline) as coming from ``origin``'s own lines."""
    return Script(text, tuple((origin, 0) for _ in text.splitlines()))


def _read(name: str) -> Script:
    """The file ``name`` with its includes put in, line by line."""
    text = (resources.files(__package__) / "lua" / name).read_text(encoding="utf-8")
    out = Script("", ())
    for number, line in enumerate(text.splitlines(), 1):
        included = _INCLUDE.match(line)
        if included:
            out += _read(included.group(1))
        else:
            out += Script(line + "\n", ((name, number),))
    return out


def step(name: str) -> Script:
    """One step alone (``"TAKE"``, ``"CLAIM_TAKE"``), as a script of its own: the connect
    guard's steps run this way (``_redis_claims``), and some tests."""
    return _read(f"{name.lower()}.lua")


def _batch() -> Script:
    """batch.lua with its steps put in, and without its comment lines (Redis parses less; the
    origins still name every line's file and line)."""
    def code(script: Script) -> Script:
        kept = [(line, origin) for line, origin in zip(script.text.splitlines(), script.origins,
                                                       strict=True)
                if not line.lstrip().startswith("--") or line == "-- include-steps"]
        return Script("".join(line + "\n" for line, _ in kept), tuple(o for _, o in kept))

    out = Script("", ())
    batch = code(_read("batch.lua"))
    for line, origin in zip(batch.text.splitlines(), batch.origins, strict=True):
        if line != "-- include-steps":
            out += Script(line + "\n", (origin,))
            continue
        out += _lines("local steps = {}\n", "batch.lua")
        for name in STEPS:
            out += _lines(f"steps['{name}'] = function(KEYS, ARGV)\n", "batch.lua")
            out += code(step(name))
            out += _lines("end\n", "batch.lua")
    return out


def sharded(script: str) -> str:
    """A registry script for Redis Cluster: it publishes with ``SPUBLISH``, which keeps the
    message on the master of the channel's slot (the namespace's, by its hash tag) where a plain
    ``PUBLISH`` would go to every node of the cluster. (Line for line the same script.)"""
    return script.replace("redis.call('PUBLISH',", "redis.call('SPUBLISH',")


_BATCH: Final = _batch()
#: The one script Redis runs: every step of :data:`STEPS` and the dispatcher of ``batch.lua``.
BATCH: Final = _BATCH.text
#: BATCH for Redis Cluster: the registry's steps publish with ``SPUBLISH`` (see :func:`sharded`).
BATCH_SHARDED: Final = sharded(BATCH)


def locate(message: str, name: str | None = None, *, script: Script = _BATCH) -> str:
    """An error message of ``script`` (the batch script unless told) with each
    ``user_script:N`` replaced by the file and line it names (``take.lua:12``). A message that
    names no line (an error reply of a Redis command inside step ``name``) gets
    `` (in take.lua)`` at its end."""
    def where(found: re.Match[str]) -> str:
        number = int(found.group(1))
        if 1 <= number <= len(script.origins):
            file, line = script.origins[number - 1]
            return f"{file}:{line}" if line else file
        return found.group(0)

    located = _LINE.sub(where, message)
    if located == message and name is not None:
        return f"{message} (in {name.lower()}.lua)"
    return located
