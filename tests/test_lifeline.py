"""Processes the lab starts end with their parent, however it ends; CI fails on any that do not."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
from waiting import read_line

from binderhub_guard.lab.bench import lifeline

ROOT = Path(__file__).resolve().parent.parent
NO_LEFTOVERS = ROOT / ".ci" / "no_leftovers.py"


def _gone(processes: list[psutil.Process]) -> bool:
    # a bounded wait: fails only if they never end
    _, alive = psutil.wait_procs(processes, timeout=30)
    return not [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]


def test_a_child_in_a_session_of_its_own_ends_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", "from binderhub_guard.lab.bench import lifeline; import time;"
         " p = lifeline.popen(['sleep', '600'], start_new_session=True);"
         " print(p.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        child = psutil.Process(int(read_line(parent.stdout, what="the child's pid")))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone([child])
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_a_child_of_a_background_job_can_be_interrupted():
    # a script's background job (CI's) ignores SIGINT and SIGQUIT; its lab children must not,
    # or jupyterhub's SIGINT to its managed services waits out its interrupt_timeout
    dispositions = subprocess.run(
        lifeline.wrap(
            [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT).__name__,"
             " signal.getsignal(signal.SIGQUIT) == signal.SIG_DFL)"]
        ),
        preexec_fn=_ignore_sigint_and_sigquit,
        capture_output=True,
        text=True,
        check=True,
    )  # fmt: skip
    assert dispositions.stdout.split() == ["default_int_handler", "True"]


def test_a_background_test_run_passes_the_default_sigint_to_what_it_starts():
    # what conftest.py and the peer plugin do first: JupyterHub's local spawners stop their
    # servers with SIGINT, and an inherited ignore made each stop wait out its timeout
    grandchild = "import signal; print(signal.getsignal(signal.SIGINT).__name__)"
    child = (
        "import subprocess, sys; from binderhub_guard.lab.bench import lifeline;"
        " lifeline.restore_interrupts();"
        f" subprocess.run([sys.executable, '-c', {grandchild!r}], check=True)"
    )
    seen = subprocess.run(
        [sys.executable, "-c", child],
        preexec_fn=_ignore_sigint_and_sigquit,
        capture_output=True,
        text=True,
        check=True,
    )
    assert seen.stdout.split() == ["default_int_handler"]


def _ignore_sigint_and_sigquit() -> None:
    for signum in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(signum, signal.SIG_IGN)


def test_a_child_started_from_a_thread_outlives_the_thread():
    # the kernel ties the parent-death signal to the thread that forked
    started: list[subprocess.Popen] = []
    thread = threading.Thread(target=lambda: started.append(lifeline.popen(["sleep", "600"])))
    thread.start()
    thread.join()
    (child,) = started
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            child.wait(timeout=1)  # the thread ended before join() returned
    finally:
        child.kill()
        child.wait()


def test_a_multiprocessing_target_ends_when_its_parent_is_killed():
    parent = subprocess.Popen(
        [sys.executable, "-c", "import multiprocessing, os, time;"
         "from binderhub_guard.lab.bench import lifeline;"
         "ctx = multiprocessing.get_context('spawn');"
         "run, args = lifeline.target(time.sleep, 600);"
         "p = ctx.Process(target=run, args=args, daemon=True); lifeline.start(p);"
         "print(p.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        child = psutil.Process(int(read_line(parent.stdout, what="the child's pid")))
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        assert _gone([child])
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()


def test_ci_check_fails_on_a_process_that_outlives_the_run_and_ends_it():
    done = subprocess.run(
        [sys.executable, str(NO_LEFTOVERS), "bash", "-c", "setsid sleep 600 & echo $!"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    leftover = int(done.stdout)
    assert f"pid {leftover} " in done.stderr and "sleep 600" in done.stderr
    assert not psutil.pid_exists(leftover) or psutil.Process(leftover).cmdline() != [
        "sleep",
        "600",
    ]


def test_ci_check_passes_a_clean_run_with_its_status():
    for script, status in (("sleep 0.2 & wait", 0), ("exit 3", 3)):
        done = subprocess.run(
            [sys.executable, str(NO_LEFTOVERS), "bash", "-c", script], timeout=120
        )
        assert done.returncode == status
