"""The assistant's HTTP and WebSocket API, one module per resource. Routes only translate
HTTP (parse, authorize, call the service or the run lifecycle in `assistant/runs.py`, answer);
the `/v1` gateway speaks OpenAI's wire format instead of Steward's."""

from __future__ import annotations

from steward.assistant.routes import (
    chat_demo,
    conversations,
    gateway,
    prompts_admin,
    runs,
    sockets,
    usage,
)

routers = (
    conversations.router,
    runs.router,
    usage.router,
    sockets.router,
    prompts_admin.router,
    chat_demo.router,
    gateway.router,
)
