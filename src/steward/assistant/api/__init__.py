"""The assistant's HTTP and WebSocket API, one module per resource: it only translates HTTP
(parse, authorize, call the service or the run lifecycle in `assistant/runs.py`, answer)."""

from __future__ import annotations

from steward.assistant.api import conversations, demo, prompts, runs, sockets

routers = (conversations.router, runs.router, sockets.router, prompts.router, demo.router)
