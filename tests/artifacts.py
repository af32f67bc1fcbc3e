"""Logs kept from hub tests: the first thing to read when one fails, on CI above all."""

from __future__ import annotations

from pathlib import Path

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


def keep_logs(workdir: Path | str, name: str) -> None:
    """Copy a DevHub work directory's hub log to test-artifacts/NAME.log and its simulator
    log (kubelet failures, bind trouble) to NAME-kubesim.log."""
    ARTIFACTS.mkdir(exist_ok=True)
    for log, suffix in (("jupyterhub.log", ""), ("kubesim.log", "-kubesim")):
        source = Path(workdir) / log
        if source.exists():
            (ARTIFACTS / f"{name}{suffix}.log").write_bytes(source.read_bytes())
