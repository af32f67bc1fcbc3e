"""Child processes that end with the process that started them, however it ends.

The lab's commands and tests start processes that start processes: a DevHub starts the
simulator and jupyterhub, and jupyterhub starts the proxy and its managed services (the idle
culler), each in a session of its own. A parent's shutdown code stops its children on a normal
end, but not when the parent is SIGKILLed, crashes, or is itself killed mid-shutdown; the
children then live on under init (a culler polling a dead hub every second, for hours).

So every such child runs under a lifeline: Linux's parent-death signal (``PR_SET_PDEATHSIG``)
asks the kernel to SIGKILL the child the moment its parent ends. The kernel delivers it whatever
state the parent died in, and a child whose own children have lifelines takes them with it: a
hub killed with its DevHub takes its proxy and services along.

Two details of the kernel's rule shape this module:

- the signal is tied to the *thread* that forked the child, not to its process: a child started
  from a short-lived thread (the replay starts its two hubs from threads) would be killed when
  that thread ends. `popen` and `start` therefore fork from the main thread or from one thread
  that lasts as long as the process;
- the setting is made in the child, after the fork: a parent that died in between would be
  missed, so the child checks that its parent is still the one it expects.

As a command, ``python -m binderhub_guard.lab.bench.lifeline PARENT_PID COMMAND...`` sets the
lifeline and execs COMMAND (same PID, same file descriptors): the hub's config wraps the proxy's
and the managed services' commands in it (see `wrap`), as jupyterhub starts those itself.

On systems without ``prctl`` (not Linux) the lifeline is a no-op; the shutdown code still runs.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

# not imported when run as the wrapper command, which is on every child's way to its exec
if TYPE_CHECKING:
    import multiprocessing.process
    import subprocess
    from concurrent.futures import ThreadPoolExecutor

PR_SET_PDEATHSIG = 1
MODULE = "binderhub_guard.lab.bench.lifeline"

T = TypeVar("T")

_forker: ThreadPoolExecutor | None = None
_forker_lock = threading.Lock()


def die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL this process when its parent ends; if `parent_pid` has already
    ended (this process was reparented), end now."""
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != parent_pid:
        os.kill(os.getpid(), signal.SIGKILL)


def wrap(command: Sequence[str], parent_pid: int | None = None) -> list[str]:
    """`command` under a lifeline to `parent_pid` (default: this process, which must be the
    one that starts it)."""
    parent = os.getpid() if parent_pid is None else parent_pid
    return [sys.executable, "-m", MODULE, str(parent), "--", *command]


def popen(args: Sequence[str], **kwargs: Any) -> subprocess.Popen:
    """`subprocess.Popen(args, **kwargs)`, killed by the kernel when this process ends."""
    import subprocess

    return _on_a_lasting_thread(subprocess.Popen, wrap(args), **kwargs)


def start(process: multiprocessing.process.BaseProcess) -> None:
    """Start a multiprocessing process made with `target`: its target runs under a lifeline."""
    _on_a_lasting_thread(process.start)


def target(function: Callable[..., Any], *args: Any) -> tuple[Callable[..., Any], tuple]:
    """`(target, args)` for a multiprocessing ``Process`` that runs `function(*args)` under a
    lifeline to this process; start it with `start`."""
    return _run_with_lifeline, (os.getpid(), function, args)


def _run_with_lifeline(parent_pid: int, function: Callable[..., Any], args: tuple) -> Any:
    die_with_parent(parent_pid)
    return function(*args)


def _on_a_lasting_thread(call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    if threading.current_thread() is threading.main_thread():
        # also keeps a Ctrl-C from landing between the fork and the caller getting the handle
        return call(*args, **kwargs)
    from concurrent.futures import ThreadPoolExecutor

    global _forker
    with _forker_lock:
        if _forker is None:
            # its one worker waits for work until the interpreter exits
            _forker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lifeline-forker")
    return _forker.submit(call, *args, **kwargs).result()


def restore_interrupts() -> None:
    """Undo what a script's background job inherits (``cmd &`` in a non-interactive shell, as
    CI runs things): SIGINT and SIGQUIT ignored. An ignored signal stays ignored across exec,
    so without this every process started from here ignores the SIGINT its parent stops it
    with (jupyterhub interrupts its services and its local spawners' servers, then waits)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGQUIT, signal.SIG_DFL)


def main(argv: list[str]) -> None:
    if len(argv) < 3 or argv[1] != "--":
        sys.exit(f"usage: python -m {MODULE} PARENT_PID -- COMMAND [ARGS...]")
    die_with_parent(int(argv[0]))
    # a handled signal is reset to its default by exec, an ignored one stays ignored
    restore_interrupts()
    command = argv[2:]
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.exit(f"{MODULE}: cannot run {command[0]}: {e}")


if __name__ == "__main__":
    main(sys.argv[1:])
