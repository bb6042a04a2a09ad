"""What the store writes back into Redis when Redis returns (the slots spent and the blocks
learned while it was away) or has lost its data (the blocks this process knows): the REPLAY
steps, one atomic step a hash tag, since on a cluster each tag may live on another master."""

from __future__ import annotations

from collections.abc import Iterable

from ._batch import hash_tag

__all__ = ["replay_steps"]


def replay_steps(items: Iterable[tuple[str, float, str]]) -> dict[str, tuple[list[str], list[str]]]:
    """The keys and args of the REPLAY step of each hash tag (see _redis_lua), for each item a
    key, the seconds it has left and its member (``""`` for a block: the longer block wins)."""
    steps: dict[str, tuple[list[str], list[str]]] = {}
    for key, seconds, member in items:
        keys, args = steps.setdefault(hash_tag(key), ([], []))
        if not keys or keys[-1] != key:
            keys.append(key)
        args += [str(len(keys)), repr(seconds), member]
    return steps
