"""What an operator installs: the wheel and sdist, the hub image recipe, the z2jh values."""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import yaml
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parent.parent
SNIPPETS = ROOT / "binderhub_guard" / "data" / "jupyterhub_config.d"


def test_wheel_holds_code_package_data_and_entry_points(dist: Path) -> None:
    (wheel,) = dist.glob("binderhub_guard-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        entry_points_text = archive.read(entry_points).decode()
    for snippet in SNIPPETS.glob("*.py"):
        assert f"binderhub_guard/data/jupyterhub_config.d/{snippet.name}" in names
    assert any(n.startswith("binderhub_guard/data/alerts/") for n in names)
    assert "binderhub_guard/lab/kubesim/server.py" in names
    assert not any(n.startswith("tests/") for n in names)
    assert "guarded-kubespawner = binderhub_guard.spawner:GuardedKubeSpawner" in entry_points_text
    assert "binderhub-guard = binderhub_guard.cli:main" in entry_points_text


def test_sdist_holds_docs_and_tests(dist: Path) -> None:
    (sdist,) = dist.glob("binderhub_guard-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"README.md", "CHANGELOG.md", "pyproject.toml", "deploy/Dockerfile"} <= names
    assert "tests/conftest.py" in names


def test_dockerfile_installs_the_wheel_onto_the_z2jh_hub_image(dist: Path) -> None:
    parser = DockerfileParser(str(ROOT / "deploy" / "Dockerfile"))
    instructions = [
        (i["instruction"], i["value"]) for i in parser.structure if i["instruction"] != "COMMENT"
    ]
    assert instructions[0][0] == "ARG" and "quay.io/jupyterhub/k8s-hub:" in instructions[0][1]
    assert ("FROM", "${HUB_IMAGE}") in instructions
    copy = next(value for op, value in instructions if op == "COPY")
    wheel_pattern = copy.split()[0]
    (wheel,) = dist.glob("binderhub_guard-*.whl")
    assert Path(wheel_pattern).match("dist/*") and wheel.match(Path(wheel_pattern).name)
    run = next(value for op, value in instructions if op == "RUN")
    assert "pip install" in run and "binderhub-guard --help" in run
    assert instructions[-1] == ("USER", "1000")


def test_z2jh_values_mount_the_packages_own_snippets() -> None:
    values = yaml.safe_load((ROOT / "deploy" / "values.yaml").read_text())
    mounted = {
        Path(spec["mountPath"]).name: spec["stringData"]
        for spec in values["hub"]["extraFiles"].values()
    }
    assert mounted == {path.name: path.read_text() for path in SNIPPETS.glob("*.py")}
    for spec in values["hub"]["extraFiles"].values():
        assert spec["mountPath"].startswith("/usr/local/etc/jupyterhub/jupyterhub_config.d/")
    assert values["cull"]["enabled"] is True
    assert values["hub"]["loadRoles"]["prometheus"]["scopes"] == ["read:metrics"]
