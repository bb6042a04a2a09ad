"""The scheduler's alarm on the real clock (issue 26): a bare future and one event-loop timer,
re-armed only when the time slept towards changes; rung early, it wakes at once; cancelled, it
leaves no timer behind. On a FakeClock it sleeps through the clock's deadline as before."""

from __future__ import annotations

import time

import anyio
import pytest

from instantly_oauth_async._limits.clock import SystemClock
from instantly_oauth_async._manager.alarm import Alarm
from instantly_oauth_async.testing import FakeClock

pytestmark = pytest.mark.anyio


async def test_it_sleeps_until_the_time_given() -> None:
    alarm = Alarm(SystemClock())
    began = time.monotonic()
    await alarm.sleep_until(began + 0.05)
    assert 0.05 <= time.monotonic() - began < 2.0
    assert alarm._wakeup is None
    began = time.monotonic()
    await alarm.sleep_until(began - 1)  # already due: at once
    assert time.monotonic() - began < 1.0


async def test_a_ring_wakes_it_early_and_the_timer_is_kept_for_the_same_time() -> None:
    alarm = Alarm(SystemClock())
    at = time.monotonic() + 30
    async with anyio.create_task_group() as group:
        group.start_soon(alarm.sleep_until, at)
        await anyio.wait_all_tasks_blocked()
        timer = alarm._timer
        assert timer is not None
        alarm.ring()
    assert alarm._wakeup is None
    async with anyio.create_task_group() as group:
        group.start_soon(alarm.sleep_until, at)
        await anyio.wait_all_tasks_blocked()
        assert alarm._timer is timer  # the same time: not re-armed
        alarm.ring()
    async with anyio.create_task_group() as group:
        group.start_soon(alarm.sleep_until, at + 1)
        await anyio.wait_all_tasks_blocked()
        assert alarm._timer is not timer and timer is not None and timer.cancelled()
        alarm.ring()
    alarm.ring()  # nobody sleeping: nothing happens


async def test_a_cancelled_sleep_leaves_no_timer() -> None:
    alarm = Alarm(SystemClock())
    with anyio.move_on_after(0.05):
        await alarm.sleep_until(time.monotonic() + 3600)
    assert alarm._timer is None and alarm._wakeup is None


async def test_an_infinite_sleep_has_no_timer_and_wakes_when_rung() -> None:
    alarm = Alarm(SystemClock())
    async with anyio.create_task_group() as group:
        group.start_soon(alarm.sleep_until, float("inf"))
        await anyio.wait_all_tasks_blocked()
        assert alarm._timer is None
        alarm.ring()


async def test_on_a_fake_clock_it_sleeps_on_the_fake_clock() -> None:
    clock = FakeClock(10.0)
    alarm = Alarm(clock)
    woke: list[float] = []

    async def sleeper() -> None:
        await alarm.sleep_until(15.0)
        woke.append(clock.monotonic())

    async with anyio.create_task_group() as group:
        group.start_soon(sleeper)
        await clock.run_for(4)
        assert woke == []
        await clock.run_for(2)
    assert woke == [15.0]
