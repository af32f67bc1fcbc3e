"""Every way JupyterHub's own tests (test_api.py, test_named_servers.py) may differ with the
guard installed, and why. Checked by the jupyterhub_peer plugin: a test named here must fail in
the runs named, with the exception and message named; every other test must pass as it does
without the guard."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    test: str  # "<file>::<test id>", as in jupyterhub/tests/
    runs: frozenset[str]  # of plain, plain-reuse, guard, guard-reuse
    raises: type[BaseException]
    match: str  # a regex the failure's message must contain
    why: str


GUARDED = frozenset({"guard", "guard-reuse"})

DIFFERENCES = [
    Difference(
        "test_api.py::test_get_users",
        GUARDED,
        AssertionError,
        r"'roles': \['admin', 'binderhub-guard-admin', 'user'\]",
        "install(c) gives the configured admin users the role binderhub-guard-admin (the"
        " guard's report scopes), so the admin's user model lists it (README, install)",
    ),
]
# Not listed, because no test here sees it: a repeated no-op stop answered 429. These tests
# never stop a stopped server twice with the same credentials and check the answer, even
# when auth_header reuses tokens.
