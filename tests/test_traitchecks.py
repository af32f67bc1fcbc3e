"""The shared range check behind every numeric trait of the guard."""

import math

import pytest
from traitlets import Float, HasTraits, Int, TraitError, validate

from binderhub_guard.traitchecks import in_range


class Settings(HasTraits):
    interval = Float(1.0)
    rate = Float(1.0)
    top = Int(10)

    @validate("interval")
    def _interval(self, proposal):
        return in_range(proposal, 0, unit="seconds")

    @validate("rate")
    def _rate(self, proposal):
        return in_range(proposal, 0, above=True)

    @validate("top")
    def _top(self, proposal):
        return in_range(proposal, 1, maximum=100)


@pytest.mark.parametrize(
    ("trait", "value"), [("interval", 0.0), ("rate", 0.5), ("top", 1), ("top", 100)]
)
def test_values_at_or_inside_the_bounds_are_kept(trait, value):
    settings = Settings(**{trait: value})
    assert getattr(settings, trait) == value


@pytest.mark.parametrize(
    ("trait", "value", "expected"),
    [
        ("interval", -1.0, "a finite number >= 0 seconds"),
        ("interval", math.inf, "a finite number >= 0 seconds"),
        ("interval", math.nan, "a finite number >= 0 seconds"),
        ("rate", 0.0, "a finite number > 0"),
        ("top", 0, "a finite number >= 1 and <= 100"),
        ("top", 101, "a finite number >= 1 and <= 100"),
    ],
)
def test_a_value_out_of_range_names_the_class_the_trait_and_the_value(trait, value, expected):
    with pytest.raises(TraitError) as raised:
        Settings(**{trait: value})
    assert str(raised.value) == f"Settings.{trait} must be {expected}, got {value!r}"
