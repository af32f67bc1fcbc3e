"""Exact live counts of watched classes, checked against gc."""

import gc

import pytest

from binderhub_guard.report.census import InstanceCensus, import_class


class Owned:
    def __init__(self, value=0):
        self.value = value


class Inheriting(Owned):
    pass


class NoInit:
    pass


class Slotted:
    __slots__ = ("x",)


def gc_count(cls):
    return sum(1 for o in gc.get_objects() if isinstance(o, cls))


def test_counts_instances_created_before_and_after_install_and_matches_gc():
    before = [Owned(), Inheriting()]
    census = InstanceCensus({"Owned": Owned, "NoInit": NoInit})
    census.install()
    try:
        after = [Owned(1), Inheriting(), NoInit(), NoInit()]
        assert census.counts() == {"Owned": gc_count(Owned), "NoInit": gc_count(NoInit)}
        assert census.counts() == {"Owned": 4, "NoInit": 2}
        assert census.created() == {"Owned": 2, "NoInit": 2}
        del before, after
        assert census.counts() == {"Owned": 0, "NoInit": 0}
    finally:
        census.uninstall()


def test_instances_still_initialise_normally():
    census = InstanceCensus({"Owned": Owned, "NoInit": NoInit})
    census.install()
    try:
        assert Owned(value=7).value == 7
        assert Inheriting(3).value == 3
        with pytest.raises(TypeError):
            NoInit(1)
    finally:
        census.uninstall()
    assert "__init__" not in NoInit.__dict__
    assert Owned.__init__.__qualname__ == "Owned.__init__"


def test_unhashable_instances_are_counted():
    class Unhashable:
        __hash__ = None

        def __eq__(self, other):
            raise AssertionError("compared")

    census = InstanceCensus({"U": Unhashable})
    census.install()
    try:
        kept = [Unhashable(), Unhashable()]
        assert census.counts() == {"U": 2}
        del kept
    finally:
        census.uninstall()


def test_classes_without_weak_references_are_refused():
    with pytest.raises(ValueError, match="Slotted"):
        InstanceCensus({"Slotted": Slotted})


@pytest.mark.parametrize(
    "spec, message",
    [
        ("kubespawner.reflector.ResourceReflector", "form"),
        ("no_such_module_here:Thing", "cannot be imported"),
        ("kubespawner.reflector:NoSuchClass", "cannot be imported"),
        ("kubespawner.reflector:time", "not a class"),
    ],
)
def test_import_class_names_the_bad_spec(spec, message):
    with pytest.raises(ValueError, match=message) as raised:
        import_class(spec)
    assert repr(spec) in str(raised.value)


def test_import_class():
    from kubespawner.reflector import ResourceReflector

    assert import_class("kubespawner.reflector:ResourceReflector") is ResourceReflector
