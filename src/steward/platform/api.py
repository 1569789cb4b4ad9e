"""The versioned API's path prefix.

Routers carry the full prefix themselves (instead of `include_router(prefix=...)`) so that
the matched route's template, used as a metric label and in logs, is the whole path.
"""

API_V1 = "/api/v1"
