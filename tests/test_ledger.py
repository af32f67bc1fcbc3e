"""The ledger alone: attribution by spawn context, weak references, orphans, release."""

from __future__ import annotations

import asyncio
import gc
import json
import weakref

import pytest
from waiting import until

from binderhub_guard.ledger import SHARED, TASK, Ledger, install_task_tracking


class Thing:
    """A resource the ledger is taught about: live until closed."""

    def __init__(self) -> None:
        self.closed = False


async def _close(thing: Thing) -> None:
    thing.closed = True


@pytest.fixture
def ledger() -> Ledger:
    ledger = Ledger(orphan_grace_seconds=0)
    ledger.register_kind("thing", lambda t: not t.closed, _close)
    return ledger


def _kinds(ledger: Ledger, spawn) -> list[str]:
    return sorted(e.kind for e in spawn.entries.values() if ledger.is_live(e))


async def test_resources_are_charged_to_the_spawn_in_context_and_its_tasks(ledger: Ledger):
    install_task_tracking(asyncio.get_running_loop(), ledger)
    spawn = ledger.begin_spawn("alice")
    outside = Thing()
    ledger.record("thing", outside)
    made_in_task = []

    async def child() -> None:
        made_in_task.append(Thing())
        ledger.record("thing", made_in_task[-1])
        await asyncio.sleep(3600)

    with ledger.activate(spawn):
        inside = Thing()
        ledger.record("thing", inside)
        task = asyncio.create_task(child())
    await asyncio.sleep(0)

    assert _kinds(ledger, spawn) == [TASK, "thing", "thing"]
    assert {e.target() for e in spawn.entries.values()} == {inside, made_in_task[0], task}
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_shared_owner_is_not_charged_to_a_spawn(ledger: Ledger):
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn), ledger.activate(SHARED):
        shared = Thing()
        ledger.record("thing", shared)
    assert spawn.entries == {}
    assert ledger.live_counts()["thing"] == 1


def test_the_ledger_keeps_nothing_alive(ledger: Ledger):
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        thing = Thing()
        ledger.record("thing", thing)
    alive = weakref.ref(thing)
    del thing
    gc.collect()
    assert alive() is None
    assert spawn.entries == {}


async def test_leftovers_become_orphans_with_origin_and_are_released(ledger: Ledger):
    spawn = ledger.begin_spawn("alice", "named")
    with ledger.activate(spawn):
        leftover, finished = Thing(), Thing()
        ledger.record("thing", leftover, "leaked thing")
        ledger.record("thing", finished)
    finished.closed = True

    ledger.end_spawn(spawn, "stopped")
    await until(lambda: leftover.closed, what="the leftover released")

    snapshot = ledger.snapshot()
    json.dumps(snapshot)
    [orphan] = snapshot["orphans"]
    assert orphan["label"] == "leaked thing"
    assert (orphan["user"], orphan["server"], orphan["spawn_id"]) == ("alice", "named", 1)
    assert orphan["released"] and not orphan["live"]
    assert any("test_ledger.py" in frame for frame in orphan["origin"])
    assert snapshot["counts"]["orphans_found"] == 1
    assert snapshot["counts"]["orphans_live"] == 0
    assert snapshot["spawns"][0]["state"] == "ended"


async def test_orphans_are_only_reported_when_release_is_off(ledger: Ledger):
    ledger.release_orphans = False
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        leftover = Thing()
        ledger.record("thing", leftover)
    ledger.end_spawn(spawn, "stopped")
    await asyncio.sleep(0.05)
    assert not leftover.closed
    assert ledger.snapshot()["counts"]["orphans_live"] == 1


def orphan_kinds(ledger: Ledger) -> list[str]:
    return sorted(o["kind"] for o in ledger.snapshot()["orphans"])


@pytest.mark.parametrize("release", [True, False])
async def test_a_kind_that_never_ends_on_its_own_gets_no_grace(release: bool):
    ledger = Ledger(orphan_grace_seconds=5, release_orphans=release)
    ledger.register_kind("thing", lambda t: not t.closed, _close)
    ledger.register_kind("watcher", lambda t: not t.closed, _close, ends_on_its_own=False)
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        finishing, watcher = Thing(), Thing()
        ledger.record("thing", finishing)
        ledger.record("watcher", watcher)

    ledger.end_spawn(spawn, "stopped")
    # the watcher is an orphan at once; the other waits out its grace first
    await until(lambda: "watcher" in orphan_kinds(ledger), what="the watcher found")
    assert watcher.closed is release
    kinds, closed = orphan_kinds(ledger), finishing.closed
    assert kinds == ["thing", "watcher"] or (kinds == ["watcher"] and not closed)
    await until(lambda: orphan_kinds(ledger) == ["thing", "watcher"], what="the thing found")
    assert finishing.closed is release
    assert orphan_kinds(ledger) == ["thing", "watcher"]  # each reported once


async def test_orphan_tasks_are_cancelled_and_awaited(ledger: Ledger):
    install_task_tracking(asyncio.get_running_loop(), ledger)
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        task = asyncio.create_task(asyncio.sleep(3600))
    ledger.end_spawn(spawn, "start failed")
    await until(task.done, what="the orphan task ended")
    assert task.cancelled()


async def test_shared_objects_are_refcounted_by_active_holders(ledger: Ledger):
    shared = Thing()
    first, second = ledger.begin_spawn("alice"), ledger.begin_spawn("bob")
    ledger.hold(first, "thing", "('pods', 'ns')", shared)
    ledger.hold(second, "thing", "('pods', 'ns')", shared)
    assert ledger.snapshot()["shared"][0]["holders"] == 2

    ledger.end_spawn(first, "stopped")
    [entry] = ledger.snapshot()["shared"]
    assert entry["holders"] == 1 and entry["holder_spawns"] == [second.spawn_id]
    assert not shared.closed  # held, not owned: never released by a spawn's end


async def test_release_all_releases_every_spawn_and_shared_resource(ledger: Ledger):
    spawn = ledger.begin_spawn("alice")
    with ledger.activate(spawn):
        owned = Thing()
        ledger.record("thing", owned)
    with ledger.activate(SHARED):
        shared = Thing()
        ledger.record("thing", shared)
    await ledger.release_all()
    assert owned.closed and shared.closed


async def test_resources_made_after_the_spawn_ended_are_swept_too(ledger: Ledger):
    spawn = ledger.begin_spawn("alice")
    ledger.end_spawn(spawn, "stopped")
    with ledger.activate(spawn):  # a task the spawn left running keeps its context
        late = Thing()
        ledger.record("thing", late)
    await until(lambda: late.closed, what="the late resource released")
