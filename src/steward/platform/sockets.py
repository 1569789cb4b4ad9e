"""WebSocket close codes: 4000-4999 belong to the application; these mirror HTTP statuses
where one fits, so a client can tell "sign in again" (4401) from "not allowed" (4403)."""

from __future__ import annotations

CLOSE_LIFETIME = 4000  # the connection reached its maximum lifetime: reconnect
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW_CONSUMER = 4408  # too slow to keep up with its queue: reconnect
CLOSE_LIMITED = 4429
