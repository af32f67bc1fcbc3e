# binderhub_guard, 2 of 2: the stop guard, the guard's scopes and role, the report routes.
#
# Repeated stops of a server that is not running, by the same caller, are answered 429
# without JupyterHub's token hashing and database work; stops of running or pending
# servers are never touched, and throttled stops are logged as one summary line per caller.
# Tune with c.StopGuard.* (help: `binderhub_guard.stopguard.StopGuard`), for example
# c.StopGuard.dry_run = True to only count, or c.StopGuard.enabled = False for stock.
# Every 10 s the hub returns the C heap's free pages to the system, so that its RSS follows
# the memory it uses (c.MemoryTrim.interval; 0 turns it off).
c = get_config()  # noqa: F821

from binderhub_guard.hub import install  # noqa: E402

install(c)
