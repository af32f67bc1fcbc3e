"""``python -m binderhub_guard.lab.kubesim``: the same as ``binderhub-guard kubesim``."""

import argparse
import sys

from .cli import add_arguments, main

parser = argparse.ArgumentParser(
    prog="python -m binderhub_guard.lab.kubesim",
    description="Run the Kubernetes API simulator until SIGINT/SIGTERM.",
)
add_arguments(parser)
sys.exit(main(parser.parse_args()))
