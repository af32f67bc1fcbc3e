"""`binderhub-guard flood`, small: the floor and a guarded hub, as JSON."""

from __future__ import annotations

import json

import pytest

from binderhub_guard.cli import build_parser

pytestmark = pytest.mark.hub


def test_flood_prints_figures_for_the_floor_and_a_guarded_hub(capsys):
    argv = ["flood", "--users", "5", "--rate", "50", "--seconds", "2", "--idle-seconds", "1"]
    argv += ["--cpu-seconds", "1"]
    args = build_parser("flood").parse_args([*argv, "--no-stock", "--json"])
    assert args.run(args) == 0
    bare, bare_as_hub, guarded = json.loads(capsys.readouterr().out)

    assert bare["target"] == "bare 429" and set(bare["statuses"]) == {"429"}
    assert bare_as_hub["target"] == "bare 429, xheaders" and set(bare_as_hub["statuses"]) == {"429"}
    assert guarded["target"] == "guarded"
    # every steady stop is a repeat, answered by the guard (how many a second is the
    # benchmark's figure, not a pass mark)
    assert set(guarded["statuses"]) == {"429"}
    assert guarded["answered"] > 0 and guarded["answered_per_second"] > 0
    assert guarded["cpu_ms_per_request"] > 0 and bare["cpu_ms_per_request"] > 0
    # the hub's own timers and watches, read with no flood, are no stop's cost
    assert guarded["background_cpu_ms_per_s"] >= 0
    assert guarded["cpu_ms_per_request_net"] <= guarded["cpu_ms_per_request"]
    assert guarded["spawners_after"] == guarded["spawners_before"] == 0
    log_lines = guarded["log_lines_per_1000"] * guarded["answered"] / 1000
    # summary lines (one per caller per minute), not one line per request
    assert log_lines < max(3, guarded["answered"] / 10), guarded
    ready, launched = map(int, guarded["launches_ready"]["idle"].split("/"))
    assert ready == launched >= 1
    assert set(guarded["normal_p99_ms"]) == {"idle", "first pass", "steady"}
