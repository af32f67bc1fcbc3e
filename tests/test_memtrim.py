"""MemoryTrim: free C-heap pages go back to the system; bad settings fail naming themselves."""

from __future__ import annotations

import asyncio

import pytest
from traitlets import TraitError
from traitlets.config import Config
from waiting import until

from binderhub_guard.memtrim import MemoryTrim


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf")])
def test_bad_interval_names_the_trait_and_the_value(value: float):
    config = Config()
    config.MemoryTrim.interval = value
    with pytest.raises(TraitError, match=rf"MemoryTrim\.interval.*{value!r}"):
        MemoryTrim(config=config)


def test_freed_memory_in_the_heaps_middle_goes_back_to_the_system():
    trim = MemoryTrim()
    if not trim.available:
        pytest.skip("no malloc_trim in this C library")
    # 1 KiB chunks come from malloc's heap; keeping one in 64 leaves free holes that stay
    # resident, which is what malloc keeps and only malloc_trim returns
    chunks = [bytes(1024) for _ in range(64 * 1024)]
    kept = chunks[::64]
    del chunks
    released = trim.trim()
    assert released > 16 * 1024 * 1024
    assert trim.status()["trims"] == 1
    assert trim.status()["released_bytes_total"] == released
    assert isinstance(trim.status()["last_seconds"], float) and trim.status()["last_seconds"] >= 0
    del kept


async def test_trims_run_at_the_interval_until_stopped():
    trim = MemoryTrim(interval=0.05)
    if not trim.available:
        pytest.skip("no malloc_trim in this C library")
    trim.start()
    try:
        await until(lambda: trim.trims >= 2, what="two trims at a 0.05 s interval")
    finally:
        trim.stop()
    trims = trim.trims
    # three intervals with nothing due: a stopped trim never runs again (however long the
    # wait really is on a busy machine, it can only make this check stricter)
    await asyncio.sleep(0.15)
    assert trim.trims == trims


async def test_interval_zero_turns_it_off():
    trim = MemoryTrim(interval=0)
    trim.start()
    await asyncio.sleep(0.05)
    assert trim.trims == 0
    trim.stop()
