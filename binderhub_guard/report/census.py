"""Exact live-instance counts of a few watched classes, in O(1) per read.

Counting by walking ``gc.get_objects()`` costs time proportional to the whole heap (tens of
milliseconds at a million objects), too much for a tick that runs every few seconds on the
hub's event loop. Instead each watched class's ``__init__`` is wrapped to add the new
instance to a ``WeakSet``; instances that existed before are found by one heap walk at
install time. Weak references never keep an instance alive, so the number held is the live
count (cyclic garbage included until the collector frees it, exactly as ``gc`` sees it).
"""

from __future__ import annotations

import functools
import gc
import importlib
import weakref
from collections.abc import Mapping


def import_class(spec: str) -> type:
    """``"package.module:Qualname"`` → the class; raises ``ValueError`` with the spec."""
    module_name, sep, qualname = spec.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"{spec!r} is not of the form 'package.module:ClassName'")
    try:
        target = importlib.import_module(module_name)
        for part in qualname.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"{spec!r} cannot be imported: {e}") from e
    if not isinstance(target, type):
        raise ValueError(f"{spec!r} is not a class")
    return target


class InstanceCensus:
    """Tracks live instances of ``classes`` (name → class), subclasses included."""

    def __init__(self, classes: Mapping[str, type]):
        self.classes = dict(classes)
        for name, cls in self.classes.items():
            if not cls.__weakrefoffset__:
                raise ValueError(f"{name}: instances of {cls.__qualname__} take no weak references")
        # Keyed by id(): a WeakSet would hash the instance, and some classes are unhashable.
        # An entry leaves when its instance dies, before the id can be reused.
        self._live: dict[str, weakref.WeakValueDictionary] = {
            name: weakref.WeakValueDictionary() for name in classes
        }
        self._created: dict[str, int] = dict.fromkeys(classes, 0)
        self._own_init: dict[type, object] = {}
        self._installed = False

    def install(self) -> None:
        """Start counting: wrap ``__init__`` and seed with instances alive now."""
        if self._installed:
            return
        for name, cls in self.classes.items():
            self._wrap_init(name, cls)
        wanted = tuple(self.classes.values())
        for obj in gc.get_objects():
            if isinstance(obj, wanted):
                self._add_existing(obj)
        self._installed = True

    def uninstall(self) -> None:
        for cls, own_init in self._own_init.items():
            if own_init is None:
                del cls.__init__
            else:
                cls.__init__ = own_init
        self._own_init.clear()
        self._installed = False

    def counts(self) -> dict[str, int]:
        return {name: len(live) for name, live in self._live.items()}

    def created(self) -> dict[str, int]:
        """Instances created since install, per watched class."""
        return dict(self._created)

    def _add_existing(self, obj: object) -> None:
        for name, cls in self.classes.items():
            if isinstance(obj, cls):
                self._live[name][id(obj)] = obj

    def _wrap_init(self, name: str, cls: type) -> None:
        own_init = cls.__dict__.get("__init__")
        live = self._live[name]
        created = self._created

        if own_init is None:

            def inherited_init(self_, *args, **kwargs):
                super(cls, self_).__init__(*args, **kwargs)

            inner = inherited_init
        else:
            inner = own_init

        @functools.wraps(inner)
        def counting_init(self_, *args, **kwargs):
            inner(self_, *args, **kwargs)
            # __init__ can run more than once on one instance (explicit re-initialisation):
            # count the instance once.
            if id(self_) not in live:
                live[id(self_)] = self_
                created[name] += 1

        self._own_init[cls] = own_init
        cls.__init__ = counting_init
