"""Skips for a tool the bootstrap installs (chromium, promtool, the jupyterhub 5 venv).

Outside CI a missing tool skips its tests with a reason that says how to install it; with
CI=true, tests/conftest.py turns such a skip into a failure: CI runs the bootstrap, so a
missing tool there is a broken bootstrap, not a reason to test less.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

MISSING_TOOL = "missing tool:"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing_tool_reason(what: str, hint: str) -> str:
    return f"{MISSING_TOOL} {what} ({hint})"


def skip_missing_tool(what: str, hint: str) -> NoReturn:
    pytest.skip(missing_tool_reason(what, hint))
