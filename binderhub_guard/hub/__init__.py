"""The one door to JupyterHub's internals: installs the guard into the running hub.

One job a file: ``install.py`` (`install(c)`, the installer and the methods it wraps, and
`check_config`), ``routes.py`` (the route table edits, pure functions over the list),
``gate.py`` (`StopGate` and the request delegate that answers repeats before tornado routes
them), ``handlers.py`` (the two JupyterHub handler subclasses).

`install(c)` is called from the config snippet ``jupyterhub_config.d/20-guard.py``. It declares
the guard's scopes and, because JupyterHub loads its config file from inside
`JupyterHub.initialize()`, hooks the live `JupyterHub.instance()` by wrapping four of its
methods on the instance (the class is left alone; listed in `_Installer.wrappers`):

- ``init_role_creation``: ``install`` declared the role ``binderhub-guard-admin`` (the guard's
  scopes) in ``load_roles``; here, when every config file has loaded, it is given to the
  configured ``Authenticator.admin_users`` unless the role spec names its own ``users``.
  JupyterHub refuses changes to the built-in ``admin`` role's scopes, so users made admin
  later through the API or the admin page do not get the guard's scopes: list them in the
  role instead. With ``Authenticator.manage_roles`` the role is given to nobody.
- ``init_handlers``: after JupyterHub built its route table, every route whose handler *is*
  ``UserServerAPIHandler`` (``/api/users/{name}/server`` and ``/api/users/{name}/servers/{sn}``)
  gets `GuardedUserServerAPIHandler`, a subclass that applies the per-caller rate after
  JupyterHub's authentication. The two routes move to the front of the table unless an earlier
  route answers the same paths (tornado tries routes in order). With a GuardedKubeSpawner,
  the two ``SpawnProgressAPIHandler`` routes get `GuardedSpawnProgressAPIHandler`, which tells
  the spawner's ``progress()`` when the browser has gone. The report's routes go in just
  before JupyterHub's ``/api/(.*)`` 404 catch-all. The StopGuard is built here too, when the
  configuration is complete, so bad StopGuard values stop the hub at start-up; with it the
  process's `GuardState` (``binderhub_guard.state``) is filled in, its ledger and relist
  damper set from the spawner's settings, and put in the tornado settings, where the report's
  handlers and the spawners find it.
- ``start`` / ``cleanup``: start and stop the report, the StopGuard's summary logging and the
  `MemoryTrim` (free C-heap pages returned to the system). Before the hub's HTTP server is
  made, its application's ``start_request`` (tornado's ``HTTPServerConnectionDelegate``
  interface) is wrapped, so that each request meets
  `StopGate` first: a repeated stop of a not-running server by a caller that JupyterHub
  already accepted for it is answered 429 right there, before tornado routes it, builds a
  handler, authenticates (token hashing, DB queries, activity records) or logs. Every other
  request goes to the application untouched. Only when the guarded routes are first, so that
  the gate answers for exactly the handler tornado would pick.

Why this hook: authenticator handlers go first in the route table, but a second route for the
same path would shadow JupyterHub's for every method; ``extra_handlers`` (deprecated) come after
the defaults and so never match; ``tornado_application.add_handlers`` adds a host rule that
wins only by accident of ordering; patching ``UserServerAPIHandler`` itself changes the class for
every importer. Replacing the two route entries by a subclass keeps every other method, the
scopes and the answers JupyterHub's own, and touches nothing when the guard is disabled.

Fragility, checked by tests on jupyterhub 5.5 and 6.1 (identical ``init_handlers``; ``delete``
differs only by 6.x's rename check): it relies on ``JupyterHub.instance()`` being the app that
loads the config, on the method names above, on ``tornado_application`` being the hub
HTTPServer's delegate, on ``UserServerAPIHandler`` being routed by class identity, on
``jupyterhub.handlers.base.auth_header_pat`` (how ``get_auth_token`` reads a token),
``hub.cookie_name``, ``User.spawners`` being a dict whose ``get`` does not create spawners, on a
loaded ``orm.User._orm_spawners`` sitting in the instance dict, on tornado's
``RequestHandler._log`` (skipped for throttled stops), ``RequestHandler._headers`` (read once
from a handler that never serves, so a stop throttled before a handler exists carries the
headers JupyterHub puts on every answer: CSP, X-JupyterHub-Version, the configured
``tornado_settings['headers']``), on the user, token, group and service API handlers (a change
through them makes the guard forget every caller it accepted) and on the ``/api/(.*)``
catch-all. If the expected routes are missing, the hub refuses to start, naming what it could
not find.
"""

from .gate import StopGate
from .handlers import GuardedSpawnProgressAPIHandler, GuardedUserServerAPIHandler
from .install import (
    ADMIN_ROLE,
    GUARD_ADMIN_SCOPE,
    GUARD_READ_SCOPE,
    GUARD_SCOPES,
    SETTINGS_KEY,
    GuardInstall,
    check_config,
    install,
)
from .routes import CREDENTIAL_HANDLERS, CapabilityError

__all__ = [
    "ADMIN_ROLE",
    "CREDENTIAL_HANDLERS",
    "GUARD_ADMIN_SCOPE",
    "GUARD_READ_SCOPE",
    "GUARD_SCOPES",
    "SETTINGS_KEY",
    "CapabilityError",
    "GuardInstall",
    "GuardedSpawnProgressAPIHandler",
    "GuardedUserServerAPIHandler",
    "StopGate",
    "check_config",
    "install",
]
