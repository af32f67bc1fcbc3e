"""`binderhub-guard differential`: a stock and a guarded hub, driven in lockstep through the same
random steps; whatever the guarded hub answers that stock would not is a counterexample.

`DifferentialMachine` is a Hypothesis rule-based state machine. Each rule sends the same requests
to a stock `DevHub` and a guarded one (allow_named_servers on, both on their own simulator) and
compares the answers: users created, deleted and churned (one deleted, another created, so the
user count stays), default and named servers started, stopped and removed, stops repeated by
several callers (a culler-like service token, the owner's token, an admin's token, the owner's
browser cookie with and without the _xsrf header, another user's token, no credentials), stops
while a spawn is pending, tokens revoked, re-issued or left to expire, and both hubs restarted
on their databases. After every step both hubs settle (nothing pending) and every server of the
step's users must be in the same state on both: running, pending, stopped or removed.

The guarded hub's answer must equal stock's (status, and the error message for errors), with one
allowed difference: 429 with Retry-After where stock's answer was a no-op stop (202 or 204) of a
server that was not running, without ``remove``. JupyterHub's own race is told apart, not
allowed blindly: a stop while a spawn is pending cancels the spawn, sleeps one second and answers
500 if the spawn has not ended by then; a 500 on one hub whose log shows that RuntimeError for
that server, against 202/204 on the other, is counted as the race (the guard passes stops of
pending servers to JupyterHub's code untouched, so either hub may lose it on a loaded machine).
Success codes that only say how long the hub waited (201/202 for a start, 202/204 for a stop)
count as the same: the settled state is compared instead. A token revoked through the API must
get stock's 403 at once (as the README says); one that expired on its own may get 429 where
stock says 403, counted apart (the README documents it).

Only the stop guard differs by default: the stock hub loads none of the guard's snippets but
spawns through the same GuardedKubeSpawner, so that a spawner difference is not taken for the
stop guard's. (Plain KubeSpawner 7.1 leaves a shared reflector registered but never watching
when the spawn that started it is cancelled, as a stop while pending after a restart does; every
later spawn of that stock hub then fails, which says nothing about stops.) `--stock-spawner
kubespawner` compares with plain KubeSpawner instead.

The short run in the test suite and this command use the same machine.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import math
import re
import secrets
import signal
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import quote

import requests
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from .devhub import DevHub

CULLER_SERVICE = "diff-culler"
CULLER_TOKEN = "diff-culler-token-0123456789abcdef"
ADMIN_USER = "admin"

# Both hubs alike. slow_spawn_timeout 0: a start answers at once, so that a stop can be sent
# while the spawn is pending; cleanup_servers off (as Zero to JupyterHub): servers outlive a
# restart. dev-client may make and revoke tokens for users.
PAIR_CONFIG = f"""
c.JupyterHub.allow_named_servers = True
c.JupyterHub.cleanup_servers = False
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.services.append({{"name": {CULLER_SERVICE!r}, "api_token": {CULLER_TOKEN!r}}})
c.JupyterHub.load_roles.extend([
    {{"name": {CULLER_SERVICE!r}, "scopes": ["admin:servers", "list:users"],
     "services": [{CULLER_SERVICE!r}]}},
    {{"name": "diff-tokens", "scopes": ["tokens"], "services": ["dev-client"]}},
])
"""

SIDES = ("stock", "guarded")
SERVERS = ("", "a")
CALLERS = ("culler", "owner", "admin", "cookie", "cookie-no-xsrf", "other-user", "anonymous")
# None: the caller of the previous stop, so that stops repeat across steps too
CALLER = st.one_of(st.none(), st.sampled_from(CALLERS))
MAX_USERS = 3
# how long a spawn stays pending in the simulator while a rule stops it
PENDING_SECONDS = 2.0
SETTLE_TIMEOUT = 90.0
CONVERGE_SECONDS = 10.0
# JupyterHub's shortest: expires_in counts whole seconds
EXPIRES_IN = 2
REQUEST_TIMEOUT = 60.0
# how far back in a hub's log to look for JupyterHub's pending-stop RuntimeError
PENDING_RACE_LOG_CHARS = 200_000
# steps before a restart may come: one with nothing to carry over is as costly and tells less
RESTART_AFTER = 5


class Counterexample(AssertionError):
    """The guarded hub answered or ended up differently from stock."""


_kinds: dict[tuple[str, ...], type[Counterexample]] = {}


def counterexample(kind: tuple[str, ...], message: str) -> Counterexample:
    """A Counterexample of a class of its own per kind of difference: Hypothesis tells bugs apart
    by exception type, so that each kind is shrunk and reported on its own."""
    cls = _kinds.get(kind)
    if cls is None:
        name = "Counterexample_" + "_".join(re.sub(r"\W", "", part) for part in kind)
        cls = _kinds[kind] = type(name, (Counterexample,), {})
    return cls(message)


@dataclass(frozen=True)
class Answer:
    status: int
    message: str | None  # an error's message; None for a success
    retry_after: str | None

    @classmethod
    def of(cls, reply: requests.Response) -> Answer:
        message = None
        if reply.status_code >= 400:
            try:
                message = reply.json().get("message")
            except ValueError:
                message = reply.text
        return cls(reply.status_code, message, reply.headers.get("Retry-After"))

    def __str__(self) -> str:
        return str(self.status) + (f" {self.message!r}" if self.message else "")


# success codes whose choice depends only on how long the hub waited for the spawner
_SAME_SUCCESS = {201: 202, 204: 202}


def same(stock: Answer, guarded: Answer) -> bool:
    def code(answer: Answer) -> int:
        return _SAME_SUCCESS.get(answer.status, answer.status)

    return code(stock) == code(guarded) and stock.message == guarded.message


@dataclass
class Side:
    """One hub and the credentials the machine holds on it."""

    name: str
    hub: DevHub
    admin_token: str = ""
    tokens: dict[str, tuple[str, str]] = field(default_factory=dict)  # user -> (token, id)
    cookies: dict[str, tuple[requests.Session, str]] = field(default_factory=dict)

    def request(
        self, method: str, path: str, *, token: str | None = None, **kwargs: Any
    ) -> requests.Response:
        headers = kwargs.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"token {token}"
        kwargs.setdefault("timeout", REQUEST_TIMEOUT)
        return requests.request(method, self.hub.api_url + path, headers=headers, **kwargs)

    def as_client(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.request(method, path, token=self.hub.token, **kwargs)

    def issue_token(self, user: str, expires_in: int | None = None) -> Answer:
        body = {} if expires_in is None else {"expires_in": expires_in}
        reply = self.as_client("POST", f"/users/{quote(user)}/tokens", json=body)
        if reply.status_code == 201:
            model = reply.json()
            self.tokens[user] = (model["token"], model["id"])
        return Answer.of(reply)

    def log_in(self, user: str) -> Answer:
        """A browser's login through the dummy authenticator's form (any password)."""
        session = requests.Session()
        page = session.get(self.hub.url + "/hub/login", timeout=REQUEST_TIMEOUT)
        found = re.search(r'name="_xsrf" value="([^"]+)"', page.text)
        form = {"username": user, "password": "any", "_xsrf": found.group(1) if found else ""}
        # not followed: the redirect to /hub/spawn would start the user's server
        reply = session.post(
            self.hub.url + "/hub/login", data=form, allow_redirects=False, timeout=REQUEST_TIMEOUT
        )
        if reply.status_code == 302:
            # a page of the hub's own sets the _xsrf cookie of the new session
            session.get(self.hub.url + "/hub/home", allow_redirects=False, timeout=REQUEST_TIMEOUT)
            self.cookies[user] = (session, session.cookies.get("_xsrf", path="/hub/") or "")
        else:
            session.close()
        return Answer(reply.status_code, None, None)

    def forget(self, user: str) -> None:
        self.tokens.pop(user, None)
        session, _xsrf = self.cookies.pop(user, (None, ""))
        if session is not None:
            session.close()

    def servers(self, prefix: str) -> dict[str, dict[str, str]]:
        """Every server of the users named `prefix`*: running, pending:<what>, stopped.

        A default server that was never started may have no spawner in the database (the
        guard's stop of it creates none, stock's does): it counts as stopped either way. A
        named server that is not listed has been removed (or never made).
        """
        reply = self.as_client(
            "GET", "/users", params={"name_filter": prefix, "include_stopped_servers": "1"}
        )
        reply.raise_for_status()
        found = {}
        for model in reply.json():
            if not model["name"].startswith(prefix):
                continue
            states = {"": "stopped"}
            for name, server in model.get("servers", {}).items():
                if server["pending"]:
                    states[name] = f"pending:{server['pending']}"
                elif server["ready"]:
                    states[name] = "running"
                else:
                    states[name] = "stopped"
            found[model["name"]] = states
        return found


# what the stock hub spawns with: the same spawner as the guarded one (only the stop guard
# differs), or plain KubeSpawner
STOCK_SPAWNERS = {
    "guarded": 'c.JupyterHub.spawner_class = "guarded-kubespawner"\n',
    "kubespawner": "",
}


class HubPair:
    """A stock and a guarded DevHub, started and stopped together."""

    def __init__(self, workdir: Path | None = None, stock_spawner: str = "guarded") -> None:
        self.hubs = {
            side: DevHub(
                stock=side == "stock",
                extra_config=PAIR_CONFIG
                + (STOCK_SPAWNERS[stock_spawner] if side == "stock" else ""),
                workdir=str(workdir / side) if workdir else None,
            )
            for side in SIDES
        }
        if workdir:
            for side in SIDES:
                (workdir / side).mkdir(parents=True, exist_ok=True)
        self.sides = {side: Side(side, hub) for side, hub in self.hubs.items()}
        self._pool = ThreadPoolExecutor(len(SIDES), thread_name_prefix="differential")

    def __enter__(self) -> HubPair:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def start(self) -> None:
        try:
            self.both(lambda side: side.hub.start())
            for side in self.sides.values():
                reply = side.as_client("POST", f"/users/{ADMIN_USER}/tokens", json={})
                reply.raise_for_status()
                side.admin_token = reply.json()["token"]
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        # each DevHub stops its own processes, by process group, whatever the other did
        try:
            self.both(lambda side: side.hub.stop())
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def both(self, action: Callable[[Side], Any]) -> dict[str, Any]:
        """`action` on both sides at once; the hubs are independent, so lockstep holds
        between steps, and a step waits for the slower hub only."""
        futures = {name: self._pool.submit(action, side) for name, side in self.sides.items()}
        results, error = {}, None
        for name, future in futures.items():
            try:
                results[name] = future.result()
            except BaseException as e:  # noqa: BLE001 - the other side's action must end too
                error = error or e
        if error is not None:
            raise error
        return results

    def restart(self) -> None:
        """Both hubs stopped cleanly and started again on their databases and simulators."""
        self.both(lambda side: side.hub.restart_hub(kill=False))


class DifferentialMachine(RuleBasedStateMachine):
    """Stock and guarded hubs in lockstep; bind a HubPair with `bind` before running."""

    pair: ClassVar[HubPair]
    # what was tried and what was allowed, across examples: the command prints it
    tally: ClassVar[Counter[str]] = Counter()
    steps_run: ClassVar[int] = 0
    # each counterexample as raised, with its steps: Hypothesis may replace it by its own
    # error when a replay goes differently (the hubs carry state from earlier examples)
    found: ClassVar[list[Counterexample]] = []
    _examples: ClassVar[Iterator[int]] = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        # names of its own: hubs are shared by examples, each example cleans up its users
        self.prefix = f"x{next(self._examples)}{secrets.token_hex(2)}-"
        self.users: list[str] = []
        self.made = 0
        # users whose current token was revoked through the API, or has expired
        self.revoked: set[str] = set()
        self.expired: set[str] = set()
        self.restarted = False
        self.rules_run = 0
        self.caller = CALLERS[0]
        self.steps: list[str] = []
        self.states: dict[str, dict[str, str]] = {}

    @classmethod
    def bind(cls, pair: HubPair) -> type[DifferentialMachine]:
        """This machine on `pair`, as a class Hypothesis can instantiate per example."""
        return type(
            cls.__name__,
            (cls,),
            {
                "pair": pair,
                "tally": Counter(),
                "steps_run": 0,
                "found": [],
            },
        )

    # --- users ---------------------------------------------------------------------------

    @rule(i=st.integers(0, MAX_USERS - 1), change=st.sampled_from(["create", "delete", "churn"]))
    def users_change(self, i: int, change: str) -> None:
        """A user created, deleted, or (churn) deleted with another created at once, so that
        the hub's user count stays. Creates when there is no user, churns when there is no
        room for one more."""
        if not self.users:
            change = "create"
        elif change == "create" and len(self.users) >= MAX_USERS:
            change = "churn"
        if change != "create":
            self._delete(self._user(i))
        if change != "delete":
            self._create()

    def _create(self) -> None:
        self.made += 1
        user = f"{self.prefix}u{self.made}"
        self._compare(
            "create user", user, lambda s: Answer.of(s.as_client("POST", f"/users/{user}"))
        )
        self._compare("issue token", user, lambda s: s.issue_token(user))
        self.users.append(user)

    def _delete(self, user: str) -> None:
        answer = self._compare(
            "delete user", user, lambda s: Answer.of(s.as_client("DELETE", f"/users/{user}"))
        )
        if answer.status >= 300:
            # both refused (a running named server makes both answer 500): the user stays
            return
        self.users.remove(user)
        self.revoked.discard(user)
        self.expired.discard(user)
        for side in self.pair.sides.values():
            side.forget(user)

    # --- callers and tokens --------------------------------------------------------------

    @precondition(lambda self: self.users)
    @rule(i=st.integers(0, MAX_USERS - 1), change=st.sampled_from(["new", "revoke", "expire"]))
    def token(self, i: int, change: str) -> None:
        """A new token for the owner; or the owner's token revoked through the API (the owner
        caller keeps sending it); or a token that expires on its own, used for a stop of the
        default server before and after it expired."""
        user = self._user(i)
        if change == "expire":
            self._expire_token(user)
            return
        if change == "new":
            self._compare("issue token", user, lambda s: s.issue_token(user))
            self.revoked.discard(user)
            self.expired.discard(user)
            return

        def revoke_token(side: Side) -> Answer:
            path = f"/users/{user}/tokens/{side.tokens[user][1]}"
            answer = Answer.of(side.as_client("DELETE", path))
            # a 404's message names the token's id, which is each hub's own
            return Answer(answer.status, None, answer.retry_after)

        self._compare("revoke token", user, revoke_token)
        self.revoked.add(user)

    def _expire_token(self, user: str) -> None:
        self._compare(
            f"issue token expiring in {EXPIRES_IN}s",
            user,
            lambda s: s.issue_token(user, expires_in=EXPIRES_IN),
        )
        issued = time.monotonic()
        self.revoked.discard(user)
        self.expired.discard(user)
        self._stop(user, "", remove=False, caller="owner")
        self._settle()
        time.sleep(max(0.0, issued + EXPIRES_IN + 1 - time.monotonic()))
        self.expired.add(user)
        self._stop(user, "", remove=False, caller="owner")

    # --- servers -------------------------------------------------------------------------

    @precondition(lambda self: self.users)
    @rule(i=st.integers(0, MAX_USERS - 1), server=st.sampled_from(SERVERS))
    def start(self, i: int, server: str) -> None:
        self._start(self._user(i), server)

    @precondition(lambda self: self.users)
    @rule(
        i=st.integers(0, MAX_USERS - 1),
        server=st.sampled_from(SERVERS),
        caller=CALLER,
        times=st.integers(1, 3),
        start_first=st.booleans(),
    )
    def stop(self, i: int, server: str, caller: str | None, times: int, start_first: bool) -> None:
        """`times` stops in a row by one caller (of a server just started, with
        `start_first`): the repeats are what the guard answers."""
        user = self._user(i)
        self._switch(caller)
        if start_first:
            self._start(user, server)
        for n in range(times):
            if start_first or n:
                self._settle()
            self._stop(user, server, remove=False)

    @precondition(lambda self: self.users)
    @rule(
        i=st.integers(0, MAX_USERS - 1),
        server=st.sampled_from(SERVERS),
        caller=CALLER,
        stop_first=st.booleans(),
    )
    def remove(self, i: int, server: str, caller: str | None, stop_first: bool) -> None:
        """Stop with ``remove``; with `stop_first`, after a plain stop by the same caller (the
        home page's "stop", then "delete")."""
        user = self._user(i)
        self._switch(caller)
        if stop_first:
            self._stop(user, server, remove=False)
            self._settle()
        self._stop(user, server, remove=True)

    @precondition(lambda self: self.users)
    @rule(i=st.integers(0, MAX_USERS - 1), server=st.sampled_from(SERVERS), caller=CALLER)
    def stop_while_pending(self, i: int, server: str, caller: str | None) -> None:
        """A start that stays pending in the simulator, and a stop sent meanwhile."""
        user = self._user(i)
        self._switch(caller)
        target = f"{user}/{server}"
        if self.states.get(user, {}).get(server) == "running":
            self._compare(
                "stop (to start again)",
                target,
                lambda s: Answer.of(s.as_client("DELETE", server_path(user, server))),
            )
            self._settle()
        self.pair.both(lambda s: s.hub.set_faults(pending_delay_seconds=PENDING_SECONDS))
        try:
            self._start(user, server, what="start (to stay pending)")
            observed = self._observe()
            state = observed["stock"].get(user, {}).get(server)
            if state != observed["guarded"].get(user, {}).get(server):
                raise self._counterexample(
                    ("pending state",), self._report(f"pending {target}", observed)
                )
            self.states = observed["stock"]
            self._stop(user, server, remove=False, note=" (while pending)")
        finally:
            self.pair.both(lambda s: s.hub.set_faults(pending_delay_seconds=0))

    @precondition(lambda self: not self.restarted and self.rules_run >= RESTART_AFTER)
    @rule()
    def restart_hubs(self) -> None:
        """Both hubs stopped cleanly and started again on their databases (once per example:
        a restart costs as much as many other steps)."""
        self.restarted = True
        self.steps.append("restart both hubs")
        self.tally["restart"] += 1
        self.pair.restart()

    # --- after every step --------------------------------------------------------------------

    @invariant()
    def same_servers(self) -> None:
        # invariants run once before the first rule too
        if self.steps:
            self.rules_run += 1
            type(self).steps_run += 1
        self._settle()

    def teardown(self) -> None:
        with contextlib.suppress(Exception):
            self.pair.both(lambda s: s.hub.set_faults(pending_delay_seconds=0))
        # servers first: a user with a running named server cannot be deleted
        for user in self.users:
            for server, state in self.states.get(user, {}).items():
                if state != "stopped":
                    path = server_path(user, server)
                    with contextlib.suppress(Exception):
                        self.pair.both(lambda s, path=path: s.as_client("DELETE", path))
        with contextlib.suppress(Exception):
            self._settle()
        for user in self.users:
            with contextlib.suppress(Exception):
                self.pair.both(lambda s, user=user: s.as_client("DELETE", f"/users/{user}"))
        for side in self.pair.sides.values():
            for user in self.users:
                side.forget(user)

    # --- helpers ---------------------------------------------------------------------------

    def _user(self, i: int) -> str:
        return self.users[i % len(self.users)]

    def _switch(self, caller: str | None) -> None:
        if caller is not None:
            self.caller = caller

    def _start(self, user: str, server: str, what: str = "start") -> None:
        path = server_path(user, server)
        self._compare(what, f"{user}/{server}", lambda s: Answer.of(s.as_client("POST", path)))

    def _stop(
        self, user: str, server: str, *, remove: bool, note: str = "", caller: str | None = None
    ) -> None:
        caller = caller or self.caller
        target = f"{user}/{server}"
        before = self.states.get(user, {}).get(server, "removed" if server else "stopped")
        if caller == "owner" and user in self.revoked:
            note += " (revoked token)"
        elif caller == "owner" and user in self.expired:
            note += " (expired token)"
        what = ("remove" if remove else "stop") + f" by {caller}{note}"
        self.tally[what] += 1
        body = {"json": {"remove": True}} if remove else {}
        answers = self.pair.both(
            lambda s: Answer.of(
                self._as_caller(s, caller, user, "DELETE", server_path(user, server), **body)
            )
        )
        stock, guarded = answers["stock"], answers["guarded"]
        self.steps.append(f"{what} {target!r} [{before}] -> stock {stock}, guarded {guarded}")
        if same(stock, guarded):
            return
        no_op = stock.status in (202, 204) and before == "stopped" and not remove
        if guarded.status == 429 and guarded.retry_after and no_op:
            self.tally["allowed: 429 for a no-op stop"] += 1
            return
        if guarded.status == 429 and stock.status == 403 and "(expired token)" in note:
            # the README's documented exception: the guard does not check tokens again
            self.tally["documented: 429 for an expired token (stock: 403)"] += 1
            return
        if before.startswith("pending") and self._lost_pending_race(answers, user, server):
            self.tally["JupyterHub's race: 500 for a stop while pending (on either hub)"] += 1
            self._retry_stop_after_race(user, server)
            return
        kind = (what, str(stock.status), str(guarded.status))
        raise self._counterexample(kind, self._report(f"{what} {target!r} while {before}", answers))

    def _lost_pending_race(self, answers: dict[str, Answer], user: str, server: str) -> bool:
        """One hub answered 500 because the spawn it cancelled outlived JupyterHub's one-second
        wait (its log says so for this server), the other 202 or 204."""
        failed = [side for side, answer in answers.items() if answer.status == 500]
        others = {answer.status for side, answer in answers.items() if side not in failed}
        if len(failed) != 1 or not others <= {202, 204}:
            return False
        log_name = f"{user}:{server}" if server else user
        log = self.pair.sides[failed[0]].hub.log_tail(PENDING_RACE_LOG_CHARS)
        return f"RuntimeError: {log_name} pending spawn" in log

    def _retry_stop_after_race(self, user: str, server: str) -> None:
        """The caller's retry after that 500, on both hubs once nothing pends. The hub that
        lost the race may have gone on to finish the spawn it answered 500 for, so the hubs'
        states may differ here: each hub must stop its server if it runs (202/204), and may
        throttle the repeat only if its server is not running."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while True:
            observed = self._observe()
            pending = any(
                state.startswith("pending")
                for users in observed.values()
                for state in users.get(user, {}).values()
            )
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        what, target = f"stop by {self.caller} again after JupyterHub's race", f"{user}/{server}"
        self.tally[what] += 1
        path = server_path(user, server)
        answers = self.pair.both(
            lambda s: Answer.of(self._as_caller(s, self.caller, user, "DELETE", path))
        )
        states = {side: observed[side].get(user, {}).get(server, "stopped") for side in SIDES}
        self.steps.append(
            f"{what} {target!r} [stock {states['stock']}, guarded {states['guarded']}]"
            f" -> stock {answers['stock']}, guarded {answers['guarded']}"
        )
        for side, answer in answers.items():
            throttled_no_op = (
                side == "guarded"
                and states[side] == "stopped"
                and answer.status == 429
                and answer.retry_after
            )
            if answer.status not in (202, 204) and not throttled_no_op:
                kind = (what, side, str(answer.status))
                raise self._counterexample(kind, self._report(f"{what} {target!r}", answers))

    def _as_caller(
        self, side: Side, caller: str, user: str, method: str, path: str, **kwargs: Any
    ) -> requests.Response:
        if caller in ("cookie", "cookie-no-xsrf"):
            if user not in side.cookies:
                login = side.log_in(user)
                if login.status != 302:
                    raise RuntimeError(f"{side.name}: login of {user} answered {login}")
            session, xsrf = side.cookies[user]
            headers = {"X-XSRFToken": xsrf} if caller == "cookie" else {}
            return session.request(
                method, side.hub.api_url + path, headers=headers, timeout=REQUEST_TIMEOUT, **kwargs
            )
        token = {
            "culler": CULLER_TOKEN,
            "owner": side.tokens[user][0],
            "admin": side.admin_token,
            "other-user": next(
                (side.tokens[other][0] for other in self.users if other != user), None
            ),
            "anonymous": None,
        }[caller]
        return side.request(method, path, token=token, **kwargs)

    def _compare(self, what: str, target: str, action: Callable[[Side], Answer]) -> Answer:
        """`action` on both hubs: the answers must be the same; returns stock's."""
        self.tally[what] += 1
        answers = self.pair.both(action)
        self.steps.append(
            f"{what} {target!r} -> stock {answers['stock']}, guarded {answers['guarded']}"
        )
        if not same(answers["stock"], answers["guarded"]):
            kind = (what, str(answers["stock"].status), str(answers["guarded"].status))
            raise self._counterexample(kind, self._report(f"{what} {target!r}", answers))
        return answers["stock"]

    def _observe(self) -> dict[str, dict[str, dict[str, str]]]:
        return self.pair.both(lambda s: s.servers(self.prefix))

    def _settle(self) -> None:
        """Wait until nothing is pending on either hub and both show the same states.

        Settled but different is given `CONVERGE_SECONDS` to agree: some changes land just
        after the spawner's stop, on either hub (a removal scheduled on the stop's future)."""
        deadline = time.monotonic() + SETTLE_TIMEOUT
        differs_since = None
        while True:
            observed = self._observe()
            pending = any(
                state.startswith("pending")
                for users in observed.values()
                for servers in users.values()
                for state in servers.values()
            )
            now = time.monotonic()
            if not pending:
                if observed["stock"] == observed["guarded"]:
                    break
                differs_since = differs_since or now
                if now - differs_since > CONVERGE_SECONDS:
                    raise self._counterexample(
                        ("server states",), self._report("settled states", observed)
                    )
            elif now > deadline:
                raise TimeoutError(self._report("servers still pending", observed))
            time.sleep(0.1)
        self.states = observed["stock"]

    def _counterexample(self, kind: tuple[str, ...], message: str) -> Counterexample:
        error = counterexample(kind, message)
        self.found.append(error)
        return error

    def _report(self, what: str, seen: dict[str, Any]) -> str:
        lines = [f"{what}: stock {seen['stock']}, guarded {seen['guarded']}", "steps so far:"]
        lines += [f"  {n}. {step}" for n, step in enumerate(self.steps, 1)]
        return "\n".join(lines)


def server_path(user: str, server: str) -> str:
    path = f"/users/{quote(user, safe='')}/server"
    return path + f"s/{quote(server, safe='')}" if server else path


def run(
    machine: type[DifferentialMachine],
    *,
    examples: int,
    steps_per_example: int,
    seed_value: int,
    shrink: bool = False,
) -> None:
    """One Hypothesis run of `machine`, reproducible from `seed_value`: raises the first
    counterexample it finds (shrunk with `shrink`)."""
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    run_state_machine_as_test(
        seed(seed_value)(machine),
        settings=settings(
            max_examples=examples,
            stateful_step_count=steps_per_example,
            deadline=None,
            database=None,
            phases=phases,
            suppress_health_check=list(HealthCheck),
            print_blob=False,
        ),
    )


# --- the command ---------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=500, help="rule steps to run in all")
    parser.add_argument("--seed", type=int, default=None, help="seed (default: a random one)")
    parser.add_argument(
        "--steps-per-example", type=int, default=30, help="most steps in one example"
    )
    parser.add_argument(
        "--shrink",
        action="store_true",
        help="let Hypothesis shrink a counterexample (slow: each try replays on the hubs, which"
        " keep state from earlier examples, so a replay may go differently)",
    )
    parser.add_argument(
        "--keep-going",
        action="store_true",
        help="after a counterexample, go on with the next seed until --steps have run",
    )
    parser.add_argument(
        "--stock-spawner",
        choices=sorted(STOCK_SPAWNERS),
        default="guarded",
        help="the stock hub's spawner: guarded (the same as the guarded hub's, so that only the"
        " stop guard differs) or kubespawner (plain KubeSpawner: spawner differences show too)",
    )
    parser.add_argument("--workdir", help="keep the hubs' files here (default: a temporary dir)")


def main(args: argparse.Namespace) -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _raise_keyboard_interrupt)
    first_seed = args.seed if args.seed is not None else secrets.randbelow(2**32)
    print(
        f"differential: {args.steps} steps, seed {first_seed}, up to {args.steps_per_example}"
        " steps per example",
        flush=True,
    )
    started = time.monotonic()
    # (seed of the run, the first counterexample raised in it, what ended the run)
    failures: list[tuple[int, Counterexample | None, BaseException]] = []
    runs = []
    machine: type[DifferentialMachine] | None = None
    interrupted = False
    try:
        workdir = Path(args.workdir) if args.workdir else None
        with HubPair(workdir, stock_spawner=args.stock_spawner) as pair:
            print(
                f"stock {pair.hubs['stock'].url} ({args.stock_spawner} spawner),"
                f" guarded {pair.hubs['guarded'].url}",
                flush=True,
            )
            machine = DifferentialMachine.bind(pair)
            # runs of a fixed size, seeds counting up from the first: replayable from it
            examples = max(1, math.ceil(min(args.steps, 300) / args.steps_per_example))
            for run_seed in itertools.count(first_seed):
                if machine.steps_run >= args.steps or (failures and not args.keep_going):
                    break
                if _interrupted:
                    # Hypothesis may take a KeyboardInterrupt for the end of its run only
                    raise KeyboardInterrupt
                before, found_before = machine.steps_run, len(machine.found)
                runs.append(run_seed)
                outcome = "passed"
                try:
                    run(
                        machine,
                        examples=examples,
                        steps_per_example=args.steps_per_example,
                        seed_value=run_seed,
                        shrink=args.shrink,
                    )
                except Exception as e:  # noqa: BLE001 - whatever ended the run is reported
                    first = (
                        machine.found[found_before] if len(machine.found) > found_before else None
                    )
                    failures.append((run_seed, first, e))
                    # not every failure is a counterexample: a hub may time out, or fail
                    if first is None and machine.steps_run == before:
                        # not one step: a hub is down, and every later run would end the same
                        print_failure(run_seed, None, e, "(no step ran: a hub is down)")
                        break
                    outcome = "COUNTEREXAMPLE" if first is not None else "ERROR"
                    outcome += f" {type(first or e).__name__}"
                    print_failure(
                        run_seed,
                        first,
                        e,
                        f"binderhub-guard differential --seed {first_seed} --steps"
                        f" {machine.steps_run} --steps-per-example {args.steps_per_example}"
                        " --keep-going",
                    )
                print(
                    f"  seed {run_seed}: {machine.steps_run - before} steps, {outcome}"
                    f" ({time.monotonic() - started:.0f}s)",
                    flush=True,
                )
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: what ran so far", file=sys.stderr)
    if machine is None:
        return 130
    print_tally(machine.tally, machine.steps_run, runs, time.monotonic() - started)
    if failures:
        print(
            f"\n{len(failures)} runs with counterexamples or errors, seeds"
            f" {', '.join(str(failure[0]) for failure in failures)}: printed above"
        )
        return 1
    print("no counterexample")
    return 130 if interrupted else 0


def print_failure(
    run_seed: int, first: Counterexample | None, ended: BaseException, replay: str
) -> None:
    what = "COUNTEREXAMPLE" if first is not None else "ERROR"
    print(f"\n{what} in the run with seed {run_seed} (replay: {replay}):")
    # as raised, with the steps of its example; then what Hypothesis made of it
    if first is not None:
        print(f"{type(first).__name__}: {first}")
    if ended is not first:
        print(f"Hypothesis: {type(ended).__name__}: {ended}")
        for note in getattr(ended, "__notes__", []):
            print(note)
        # a flaky failure's own: what failed the first time
        for error in getattr(ended, "exceptions", ()):
            print("".join(traceback.format_exception(error, limit=-4)))
    sys.stdout.flush()


def print_tally(tally: Counter[str], steps: int, seeds: list[int], wall: float) -> None:
    print(f"\n{steps} steps in {wall:.0f}s, seeds {seeds[0]}..{seeds[-1]}" if seeds else "")
    width = max((len(what) for what in tally), default=0)
    for what, count in sorted(tally.items()):
        print(f"  {what:<{width}}  {count}")


_interrupted = False


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt
