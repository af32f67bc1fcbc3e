"""Range checks for numeric traits.

A value out of range stops the hub at start-up with a message naming the trait as it is
configured (``Class.trait``) and the value given, as JupyterHub's own validators do.
"""

from __future__ import annotations

import math
from typing import Any

from traitlets import TraitError


def in_range(
    proposal: dict,
    minimum: float,
    *,
    above: bool = False,
    maximum: float | None = None,
    unit: str = "",
) -> Any:
    """The proposed value if it is finite and at least `minimum` (more than it, with `above`)
    and at most `maximum`; otherwise a TraitError naming ``Class.trait`` and the value."""
    value = proposal["value"]
    low_ok = value > minimum if above else value >= minimum
    if math.isfinite(value) and low_ok and (maximum is None or value <= maximum):
        return value
    expected = f"a finite number {'>' if above else '>='} {minimum:g}"
    if maximum is not None:
        expected += f" and <= {maximum:g}"
    if unit:
        expected += f" {unit}"
    trait = f"{type(proposal['owner']).__name__}.{proposal['trait'].name}"
    raise TraitError(f"{trait} must be {expected}, got {value!r}")
