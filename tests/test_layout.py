"""The hub extension stands on its own: a hub, and `binderhub-guard check`, load none of the lab."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "binderhub_guard"
CONFIG_D = ROOT / "jupyterhub_config.d"

# what a hub image runs: the spawner entry point and the config snippet's install(c), and the
# start-up self-check on the snippets (which imports JupyterHub, the spawner and the report)
LOADS = {
    "spawner and install": (
        "import binderhub_guard.spawner, binderhub_guard.hub, binderhub_guard.report"
    ),
    "check --help": (
        "import sys; from binderhub_guard import cli; sys.argv[1:] = ['check', '--help']\n"
        "try:\n    cli.main()\nexcept SystemExit:\n    pass"
    ),
    "check --config": (
        "from binderhub_guard import cli\n"
        f"cli.main(['check', '--config', {str(CONFIG_D / '20-guard.py')!r}])"
    ),
}


@pytest.mark.parametrize("what", sorted(LOADS))
def test_the_extension_loads_none_of_the_lab(what: str) -> None:
    probe = LOADS[what] + (
        "\nimport sys\n"
        "print('LAB', sorted(m for m in sys.modules if m.startswith('binderhub_guard.lab')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd="/", check=False
    ).stdout
    assert "LAB []" in out.splitlines(), out


def test_no_extension_module_imports_the_lab() -> None:
    # a static check besides the run above: an import inside a function would not show there
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if PACKAGE / "lab" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                if node.level:
                    names = [f"{'.' * node.level}{node.module or ''}"]
                    names += [f"{names[0]}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            if any(".lab" in name or name.startswith("lab") for name in names):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not offenders


def test_the_dev_hub_loads_the_extensions_own_snippets() -> None:
    # the lab finds the extension's files through its package, wherever the lab sits: a wrong
    # folder would load no snippet, and every hub test would run an unguarded hub
    from binderhub_guard.lab.bench.devhub import SNIPPETS_DIR

    assert SNIPPETS_DIR == PACKAGE / "data" / "jupyterhub_config.d"
    assert {p.name for p in SNIPPETS_DIR.glob("*.py")} == {p.name for p in CONFIG_D.glob("*.py")}
