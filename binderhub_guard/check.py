"""`binderhub-guard check --config PATH`: the hub's start-up self-check, without a hub."""

from __future__ import annotations

import argparse
import sys

from traitlets import TraitError

from .hub import CapabilityError, check_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", required=True, help="the hub's jupyterhub_config.py (which calls install(c))"
    )


def main(args: argparse.Namespace) -> int:
    try:
        outcome = check_config(args.config)
    except (TraitError, CapabilityError) as e:
        print(f"FAIL  {e}", file=sys.stderr)
        return 1
    for capability, status in outcome.items():
        mark = "FAIL" if "NOT INSTALLED" in status else "ok  "
        print(f"{mark}  {capability}: {status}")
    return 0
