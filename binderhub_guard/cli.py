"""`binderhub-guard`: one subcommand per capability, each measurable against a real hub."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
from typing import Any

# name -> (module with add_arguments(parser) and main(args), one-line help); a module is
# imported only when its command runs, so that `check` in a hub image loads none of the lab
SUBCOMMANDS = {
    "kubesim": ("binderhub_guard.lab.kubesim.cli", "run the embedded Kubernetes API simulator"),
    "control-plane": (
        "binderhub_guard.lab.controlplane.cli",
        "run a real kube-apiserver, etcd and controller-manager on loopback, with a node agent",
    ),
    "dev-hub": ("binderhub_guard.lab.bench.devhub", "run a real hub on the simulator"),
    "demo": ("binderhub_guard.lab.bench.demo", "spawn and stop servers through a dev hub"),
    "soak": ("binderhub_guard.lab.bench.soak", "spawn/stop cycles: leak figures, stock vs guarded"),
    "flood": ("binderhub_guard.lab.bench.flood", "stop flood: hub cost, stock vs guarded"),
    "stop-memory": (
        "binderhub_guard.lab.bench.stopmemory",
        "stop guard memory under distinct long names, stock vs guarded",
    ),
    "report": ("binderhub_guard.report.cli", "print a hub's guard report"),
    "check": ("binderhub_guard.check", "the hub start-up self-check, without a hub"),
    "report-bench": ("binderhub_guard.lab.bench.reportbench", "guard report latency and stalls"),
    "replay": ("binderhub_guard.lab.bench.replay", "the 2018 outage re-enacted, stock vs guarded"),
    "differential": (
        "binderhub_guard.lab.bench.differential",
        "stock and guarded hubs in lockstep through random steps: any other answer is a bug",
    ),
    "latency": ("binderhub_guard.lab.bench.latency", "normal calls: stock vs guarded latency"),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only `command`'s module is imported to add its arguments."""
    parser = argparse.ArgumentParser(prog="binderhub-guard", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(sub)
            sub.set_defaults(run=module.main)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((arg for arg in argv if arg in SUBCOMMANDS), None)
    args = build_parser(command).parse_args(argv)
    # SIGTERM stops a command as Ctrl-C does, through its cleanup: the default action would
    # end the process on the spot, and leave what it started to the lifelines alone. SIGINT is
    # set too: a command started in the background by a non-interactive shell (`cmd &` in a
    # script, as CI does) inherits SIGINT ignored, and Python keeps it ignored
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_keyboard_interrupt)
    return args.run(args)


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
