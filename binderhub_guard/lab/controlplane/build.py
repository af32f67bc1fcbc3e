"""The control plane's one binary, built from source with Go once and cached by version.

`go/` beside this module is a Go module (go.mod, go.sum, main.go) whose one `main` is
kube-apiserver, kube-controller-manager or etcd, chosen by its first argument, all from
Kubernetes `KUBERNETES_VERSION` (etcd is the version Kubernetes itself requires). No registry
ships these binaries for this machine, so they are built with the machine's Go from the Go
module proxy (GOPROXY, GOFLAGS as the environment sets them).

The binary is cached outside the work tree, under
``$BINDERHUB_GUARD_CACHE`` (default ``$XDG_CACHE_HOME/binderhub-guard``, else
``~/.cache/binderhub-guard``) in ``k8s-<version>/controlplane-<source hash>``: a fresh clone,
another worktree or another venv finds it there, and a change to the Go source builds anew
(seconds to a minute once Go's own build cache is warm: a cold build takes about ten minutes
on two cores). Builds are serialised by a lock file, so parallel test workers build it once.

As a command, ``python -m binderhub_guard.lab.controlplane.build`` builds it if missing and
prints its path (scripts/bootstrap-control-plane.sh runs that).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

KUBERNETES_VERSION = "v1.34.3"
SOURCE_DIR = Path(__file__).resolve().parent / "go"
SOURCE_FILES = ("go.mod", "go.sum", "main.go")
BINARY_PREFIX = "controlplane-"
# the version the binary reports (`controlplane version`, /version): a plain `go build` of a
# module that requires k8s.io/kubernetes otherwise says v0.0.0-master
LDFLAGS = " ".join(
    [
        "-s",
        "-w",
        f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_VERSION}",
        "-X k8s.io/component-base/version.gitMajor=1",
        f"-X k8s.io/component-base/version.gitMinor={KUBERNETES_VERSION.split('.')[1]}",
    ]
)
BUILD_HINT = (
    "build it once (about 10 min on 2 cores, cached after): bash scripts/bootstrap-control-plane.sh"
)


class BuildError(RuntimeError):
    """The control plane binary is missing and could not be built; the message says why."""


def cache_root() -> Path:
    if os.environ.get("BINDERHUB_GUARD_CACHE"):
        return Path(os.environ["BINDERHUB_GUARD_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "binderhub-guard"


def source_hash() -> str:
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        digest.update(name.encode() + b"\0" + (SOURCE_DIR / name).read_bytes() + b"\0")
    digest.update(LDFLAGS.encode())
    return digest.hexdigest()[:12]


def cache_dir() -> Path:
    return cache_root() / f"k8s-{KUBERNETES_VERSION}"


def binary_path() -> Path:
    """Where the binary for this source is, or will be once built."""
    return cache_dir() / f"{BINARY_PREFIX}{source_hash()}"


def cached_binary() -> Path | None:
    """The binary if it is built, else None."""
    path = binary_path()
    return path if os.access(path, os.X_OK) else None


def find_go() -> str | None:
    return shutil.which("go")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ensure_binary(*, build: bool = True, log: Path | None = None) -> Path:
    """The cached binary; built first if missing and `build` (else BuildError)."""
    found = cached_binary()
    if found is not None:
        return found
    if not build:
        raise BuildError(f"the control plane binary is not built ({binary_path()}); {BUILD_HINT}")
    go = find_go()
    if go is None:
        raise BuildError("Go is not on PATH: the control plane is built from source with Go")
    target = binary_path()
    with _locked(target.parent / ".build.lock"):
        if os.access(target, os.X_OK):
            return target  # another process built it while this one waited
        _build(go, target, log or target.parent / "build.log")
    return target


def _build(go: str, target: Path, log_path: Path) -> None:
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    # the environment's GOPROXY, GOFLAGS and CGO_ENABLED as they are: the Go sum database
    # checks what the module proxy serves against go.sum (-mod=readonly: go.sum is complete)
    env = dict(os.environ)
    command = [
        go,
        "build",
        "-mod=readonly",
        "-trimpath",
        "-ldflags",
        LDFLAGS,
        "-o",
        str(partial),
        ".",
    ]
    started = time.monotonic()
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(command)}  (in {SOURCE_DIR})\n".encode())
        log.flush()
        result = subprocess.run(
            command, cwd=SOURCE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT, check=False
        )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        tail = log_path.read_text(errors="replace")[-3000:]
        raise BuildError(f"go build failed (status {result.returncode}), {log_path}:\n{tail}")
    os.replace(partial, target)
    info = {
        "kubernetes": KUBERNETES_VERSION,
        "source_hash": source_hash(),
        "build_seconds": round(seconds, 1),
        "bytes": target.stat().st_size,
        "go": subprocess.run([go, "version"], capture_output=True, text=True).stdout.strip(),
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target.with_name(target.name + ".json").write_text(json.dumps(info, indent=1) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m binderhub_guard.lab.controlplane.build", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--check", action="store_true", help="exit 1 if not built; build nothing")
    args = parser.parse_args(argv)
    try:
        path = ensure_binary(build=not args.check)
    except BuildError as error:
        print(f"control plane: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
