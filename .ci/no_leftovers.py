"""Run a command; fail if any process it started outlives it.

    python3 .ci/no_leftovers.py COMMAND [ARGS...]

This process makes itself a child subreaper (Linux's PR_SET_CHILD_SUBREAPER): an orphan among
its descendants is reparented to it instead of to init, however it got away (a session of its
own, a double fork, a parent that died). So when COMMAND has exited, every process still
descending from this one was started by the run and outlived it, and nothing else is: other
people's processes on the machine never are. An environment marker would miss exactly the
processes this check is for: jupyterhub starts its managed services (the idle culler) with
only the variables in its `env_keep`.

Survivors get GRACE_SECONDS to finish exiting; those still there are listed, SIGKILLed by PID
(so that a failed run leaves nothing running either), and the check exits 1 (or COMMAND's
status, if that failed). Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

PR_SET_CHILD_SUBREAPER = 36
GRACE_SECONDS = 10
NAME = "no-leftovers"


def descendants(root: int) -> list[int]:
    """PIDs descending from `root`, from /proc (a snapshot; processes come and go)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name, in parentheses, may hold spaces and parentheses itself
        ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, pending = [], [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


def describe(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2 :].split()
        state, ppid, pgid, sid = fields[0].decode(), fields[1], fields[2], fields[3]
    except OSError:
        return f"{pid} (gone)"
    return f"pid {pid} ppid {int(ppid)} pgid {int(pgid)} sid {int(sid)} {state} {command}"


def reap() -> None:
    """Collect the exit status of every orphan that has ended (they are ours now)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def main(command: list[str]) -> int:
    if not command:
        print(f"usage: {sys.argv[0]} COMMAND [ARGS...]", file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"{NAME}: prctl(PR_SET_CHILD_SUBREAPER) failed", file=sys.stderr)
        return 2
    child = os.posix_spawnp(command[0], command, os.environ)
    # CI's SIGTERM reaches this process only: pass it on, and let the command clean up.
    # (A Ctrl-C reaches the whole foreground process group, the command included.)
    signal.signal(signal.SIGTERM, lambda signum, frame: _pass_on(child, signum))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        # reaps orphans as they end, until the command itself has
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    status = os.waitstatus_to_exitcode(status)
    status = status if status >= 0 else 128 - status

    deadline = time.monotonic() + GRACE_SECONDS
    while True:
        reap()
        left = descendants(os.getpid())
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    if not left:
        return status
    print(
        f"{NAME}: {len(left)} processes started by `{' '.join(command)}` outlived it"
        f" (after {GRACE_SECONDS} s):",
        file=sys.stderr,
    )
    for pid in left:
        print(f"  {describe(pid)}", file=sys.stderr)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    time.sleep(0.5)
    reap()
    return status or 1


def _pass_on(child: int, signum: int) -> None:
    # the command may have ended (and been reaped) just before the signal came
    with contextlib.suppress(ProcessLookupError):
        os.kill(child, signum)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
