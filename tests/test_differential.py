"""Stock and guarded hubs in lockstep through random steps (binderhub_guard.lab.bench.differential):
the guarded hub answers as stock does, except 429 for a repeated no-op stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from artifacts import keep_logs

from binderhub_guard.lab.bench.differential import DifferentialMachine, HubPair, run

pytestmark = pytest.mark.hub

# fixed, so that a failure here replays with the command (the note on the failure says how)
SEED = 169
EXAMPLES = 3
STEPS_PER_EXAMPLE = 10


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubPair]:
    workdir = tmp_path_factory.mktemp("differential")
    with HubPair(workdir) as hubs:
        yield hubs
        for side in ("stock", "guarded"):
            keep_logs(workdir / side, f"test_differential-{side}")


def test_guarded_hub_answers_as_stock_but_for_repeated_no_op_stops(pair: HubPair) -> None:
    machine = DifferentialMachine.bind(pair)
    try:
        run(
            machine,
            examples=EXAMPLES,
            steps_per_example=STEPS_PER_EXAMPLE,
            seed_value=SEED,
            shrink=False,
        )
    except Exception as e:
        e.add_note(
            f"differential seed {SEED}, {EXAMPLES} examples of up to {STEPS_PER_EXAMPLE} steps;"
            f" replay: binderhub-guard differential --seed {SEED}"
            f" --steps {EXAMPLES * STEPS_PER_EXAMPLE} --steps-per-example {STEPS_PER_EXAMPLE}"
        )
        if machine.found and e is not machine.found[0]:
            # Hypothesis' replay went differently (the hubs keep state): the first as raised
            e.add_note(f"first counterexample: {machine.found[0]}")
        raise
    assert machine.steps_run > 0
