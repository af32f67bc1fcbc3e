"""The guard's two custom scopes, named once: the report's handlers and page check them, the
installer declares them (and its admin role), the lab's dev hub grants them."""

READ_SCOPE = "custom:guard:read"
ADMIN_SCOPE = "custom:guard:admin"
