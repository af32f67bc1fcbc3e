"""GuardedKubeSpawner in process against the Kubernetes API simulator (no hub).

Counts come from the heap (gc) and from the simulator's own open-watch count, not only from
the ledger.  Reflectors restart their watches every second here, so the simulator notices a
closed watch within about a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import weakref
from types import SimpleNamespace

import pytest
from jupyterhub.utils import maybe_future
from kubernetes_asyncio.config import kube_config
from kubespawner import KubeSpawner
from kubespawner.reflector import ResourceReflector
from traitlets import TraitError
from traitlets.config import Config
from waiting import until, within

from binderhub_guard.lab.kubesim.server import KubeSim
from binderhub_guard.lab.leaky import LeakyGuardedKubeSpawner, LeakyKubeSpawner
from binderhub_guard.spawner import (
    GuardedKubeSpawner,
    check_config,
    progress_client_gone,
    spawner_settings,
)
from binderhub_guard.state import SETTINGS_KEY, GuardState

NAMESPACE = "default"


@pytest.fixture
async def sim(tmp_path, monkeypatch):
    sim = KubeSim()
    await sim.start()
    kubeconfig = str(sim.write_kubeconfig(tmp_path / "kubeconfig"))
    # read once at import by kubernetes_asyncio, so setting $KUBECONFIG now would be too late
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", kubeconfig)
    yield sim
    await KubeSpawner._stop_all_reflectors()
    for reflector in _watching_reflectors():
        await reflector.stop()
    await sim.stop()


def _config() -> Config:
    config = Config()
    config.ResourceReflector.timeout_seconds = 1
    config.GuardedKubeSpawner.orphan_grace_seconds = 0
    return config


def make_spawner(cls: type, sim: KubeSim, **kwargs) -> KubeSpawner:
    settings = {"k8s_api_host": sim.url, "namespace": NAMESPACE, "start_timeout": 10}
    spawner = cls(_mock=True, config=_config(), **{**settings, **kwargs})
    spawner.api_token = "not-a-real-token"
    return spawner


async def spawn_and_stop(spawner: KubeSpawner) -> None:
    """What jupyterhub does for a server's life: start, stop, then the post-stop hook."""
    await spawner.start()
    await spawner.stop()
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it


def _watching_reflectors() -> list[ResourceReflector]:
    return [
        o
        for o in gc.get_objects()
        if isinstance(o, ResourceReflector) and o.watch_task is not None and not o.watch_task.done()
    ]


def _per_pod_reflectors() -> list[ResourceReflector]:
    return [r for r in _watching_reflectors() if "involvedObject.name" in r.field_selector]


async def _settle(sim: KubeSim, expected_watches: int) -> None:
    """Until the simulator itself counts `expected_watches` open watches."""
    await until(
        lambda: sim.open_watches() == expected_watches,
        what=f"{expected_watches} open watches (the simulator counts {sim.open_watches()})",
    )


async def test_guard_releases_the_2018_leak_and_reports_it_as_orphans(sim):
    spawner = make_spawner(LeakyGuardedKubeSpawner, sim)
    await spawner.start()
    assert len(_per_pod_reflectors()) == 1
    assert "reflector" in {e.kind for e in spawner._spawn.entries.values()}
    await spawner.stop()
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it

    await until(lambda: _per_pod_reflectors() == [], what="the leaked reflector stopped")
    await _settle(sim, 2)  # the shared pod and event watches only
    snapshot = spawner.ledger.snapshot()
    orphans = [o for o in snapshot["orphans"] if o["spawn_id"] == spawner._spawn.spawn_id]
    reflector_orphans = [o for o in orphans if o["kind"] == "reflector"]
    assert len(reflector_orphans) == 1
    assert "involvedObject.name" in reflector_orphans[0]["label"]
    assert any("leaky.py" in frame for frame in reflector_orphans[0]["origin"])
    assert all(o["released"] and not o["live"] for o in orphans)


async def test_stock_base_keeps_the_leaked_reflector_watching(sim):
    spawner = make_spawner(LeakyKubeSpawner, sim)
    await spawn_and_stop(spawner)
    await spawn_and_stop(spawner)

    assert len(_per_pod_reflectors()) == 2
    await _settle(sim, 4)
    assert len(_per_pod_reflectors()) == 2


async def test_shared_reflectors_do_not_pin_a_stopped_spawner(sim):
    guarded = make_spawner(GuardedKubeSpawner, sim)
    await spawn_and_stop(guarded)
    shared = list(KubeSpawner.reflectors.values())
    assert shared and all(r.parent is not guarded for r in shared)
    gone = weakref.ref(guarded)
    del guarded
    gc.collect()
    assert gone() is None


async def test_stock_shared_reflectors_pin_the_spawner_that_created_them(sim):
    stock = make_spawner(KubeSpawner, sim)
    await spawn_and_stop(stock)
    pinned = weakref.ref(stock)
    del stock
    gc.collect()
    assert pinned() is not None
    assert all(r.parent is pinned() for r in KubeSpawner.reflectors.values())


async def test_watch_dropped_or_expired_during_a_spawn_leaves_one_reflector_per_kind(sim):
    sim.faults.update({"watch_drop_after_events": 1})
    spawner = make_spawner(GuardedKubeSpawner, sim)
    start = asyncio.ensure_future(spawner.start())
    await asyncio.sleep(0.05)
    sim.compact_now()  # resuming watches now get 410 Expired
    await start
    sim.compact_now()
    # a few drops and relists after the start
    watches_after_start = sim.watch_requests
    await until(lambda: sim.watch_requests >= watches_after_start + 3, what="three more watches")

    assert sorted(r.kind for r in _watching_reflectors()) == ["events", "pods"]
    assert sim.watch_requests > 2
    sim.faults.update({"watch_drop_after_events": None})
    await spawner.stop()
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it
    assert sorted(r.kind for r in _watching_reflectors()) == ["events", "pods"]


async def test_failed_start_ends_the_spawn_and_releases_its_leak(sim):
    sim.faults.update({"pods_fail": True})
    spawner = make_spawner(LeakyGuardedKubeSpawner, sim, start_timeout=2)
    with pytest.raises(TimeoutError):
        await spawner.start()
    # jupyterhub polls, finds the pod gone or failed, and may skip stop(): the hook still runs
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it
    assert spawner._spawn.end_reason == "start failed"
    await until(lambda: _per_pod_reflectors() == [], what="the leaked reflector stopped")


@pytest.mark.parametrize("delete_stopped_pods", [True, False])
async def test_a_pod_left_by_a_skipped_stop_is_deleted_unless_stopped_pods_are_kept(
    sim, delete_stopped_pods: bool
):
    sim.faults.update({"pods_rejected": True})
    spawner = make_spawner(
        GuardedKubeSpawner, sim, start_timeout=1, delete_stopped_pods=delete_stopped_pods
    )
    with pytest.raises(TimeoutError):
        await spawner.start()
    # poll() calls the rejected pod dead, so jupyterhub's User.stop skips stop()
    assert await spawner.poll() == 1
    await maybe_future(spawner.run_post_stop_hook())
    assert [p["metadata"]["name"] for p in sim.pods()] == (
        [] if delete_stopped_pods else [spawner.pod_name]
    )


async def test_abandoned_progress_is_ended_with_its_spawn(sim):
    sim.faults.update({"pods_never_ready": True})
    spawner = make_spawner(GuardedKubeSpawner, sim, start_timeout=30)
    start = spawner.start()
    progress = spawner.progress()
    step = asyncio.ensure_future(progress.__anext__())
    # the pod never gets ready: nothing ends the progress but the spawn's end (waiting longer
    # on a busy machine only makes this check stricter)
    await asyncio.sleep(0.3)
    assert not step.done()

    start.cancel()  # what the hub does at its start timeout
    # each step bounded on its own: a full-suite run once hung here for 300 s (not reproduced)
    await within(spawner.stop(now=True), "stop(now=True) after the cancelled start")
    await within(maybe_future(spawner.run_post_stop_hook()), "the post-stop hook")

    await until(step.done, what="the progress ended with its spawn")
    assert spawner._spawn.end_reason == "start cancelled or timed out"
    live = spawner.ledger.snapshot()["spawns"]
    mine = [s for s in live if s["spawn_id"] == spawner._spawn.spawn_id]
    assert mine[0]["live"]["progress"] == 0
    await within(progress.aclose(), "closing the progress")


async def test_progress_ends_when_the_hub_says_its_client_has_gone(sim):
    sim.faults.update({"pods_never_ready": True})
    spawner = make_spawner(GuardedKubeSpawner, sim, start_timeout=30)
    start = spawner.start()
    gone = asyncio.get_running_loop().create_future()
    token = progress_client_gone.set(gone)  # as the hub's progress handler does
    try:
        progress = spawner.progress()
        step = asyncio.ensure_future(progress.__anext__())
    finally:
        progress_client_gone.reset(token)
    await asyncio.sleep(0.3)  # as above: only the client's going ends it
    assert not step.done()

    gone.set_result(None)
    await until(step.done, what="the progress ended when its client went")

    assert step.cancelled()
    assert spawner._spawn.active
    mine = spawner.ledger._describe_spawn(spawner._spawn)
    assert mine["live"]["progress"] == 0
    start.cancel()
    await spawner.stop(now=True)
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it


def test_bad_orphan_grace_fails_naming_the_trait_and_value():
    config = Config()
    config.GuardedKubeSpawner.orphan_grace_seconds = -1.0
    with pytest.raises(TraitError, match=r"GuardedKubeSpawner\.orphan_grace_seconds.*-1\.0"):
        check_config(config)
    config.GuardedKubeSpawner.orphan_grace_seconds = 2.0
    check_config(config)


async def test_a_profile_namespace_adds_shared_reflectors_held_only_while_its_spawn_runs(sim):
    sim.api.ensure_namespace("profile-ns")
    spawner = make_spawner(GuardedKubeSpawner, sim, namespace="profile-ns")
    await spawner.start()
    key = repr(("pods", "profile-ns"))

    def holding() -> dict:
        shared = spawner.ledger.snapshot()["shared"]
        return next(entry for entry in shared if entry["key"] == key)

    assert holding()["holder_spawns"] == [spawner._spawn.spawn_id]
    await spawner.stop()
    await maybe_future(spawner.run_post_stop_hook())  # as jupyterhub calls it
    # kubespawner keeps it for the hub's lifetime; the ledger shows nobody needs it
    assert holding()["holders"] == 0 and holding()["live"]


async def test_a_spawn_cancelled_while_starting_the_shared_reflectors_leaves_them_watching(sim):
    """kubespawner registers a shared reflector before its first list; a spawn cancelled during
    that list (a stop while pending, right after a hub restart) leaves plain KubeSpawner's
    reflectors registered, never watching, and every later spawn waiting on their first load
    until start_timeout. Found by the stock-vs-guarded differential run."""
    sim.faults.latency_seconds = 0.5  # the first list takes long enough to be cancelled in
    first = make_spawner(GuardedKubeSpawner, sim)
    starting = asyncio.ensure_future(first.start())
    await until(lambda: KubeSpawner.reflectors, what="the shared reflectors registered")
    starting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await starting
    sim.faults.latency_seconds = 0
    second = make_spawner(GuardedKubeSpawner, sim)
    await within(second.start(), "a start after the cancelled one")
    assert all(r.watch_task is not None for r in KubeSpawner.reflectors.values())
    await second.stop()


async def test_a_spawner_in_a_hub_takes_the_installer_s_state_and_leaves_its_set_up_alone(sim):
    state = GuardState()  # as the installer makes and sets it up, once
    settings = {SETTINGS_KEY: state}  # the hub's tornado settings, which every User carries
    user = SimpleNamespace(name="alice", id=1, url="/user/alice/", settings=settings)
    spawner = make_spawner(GuardedKubeSpawner, sim, user=user)
    assert spawner.guard_state is state and spawner.ledger is state.ledger
    # its config says 0: setting the ledger up is the installer's job, not each spawner's
    assert state.ledger.orphan_grace_seconds == 5.0

    alone = make_spawner(GuardedKubeSpawner, sim)  # kubespawner without install(c)
    assert alone.guard_state is GuardState.for_process() is not state
    assert alone.ledger.orphan_grace_seconds == 0  # set up from its own settings


async def test_the_installer_reads_a_spawner_s_settings_as_the_spawner_does(sim):
    config = _config()
    config.GuardedKubeSpawner.relist_max_delay = 20.0
    config.KubeSpawner.release_orphans = False
    config.LeakyGuardedKubeSpawner.orphan_grace_seconds = 3.0
    config.KubeSpawner.start_timeout = 7  # not a ledger or fault setting: not read
    read = spawner_settings(config, LeakyGuardedKubeSpawner)
    spawner = LeakyGuardedKubeSpawner(_mock=True, config=config, k8s_api_host=sim.url)
    for name in ("relist_max_delay", "release_orphans", "orphan_grace_seconds", "ledger_enabled"):
        assert getattr(read, name) == getattr(spawner, name), name
    assert (read.relist_max_delay, read.release_orphans, read.orphan_grace_seconds) == (
        20.0,
        False,
        3.0,
    )
