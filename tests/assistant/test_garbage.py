"""A run's path through the API leaves (almost) no reference cycles: cyclic garbage is what
makes the collector run, and its pauses were the tail of time to first token under load."""

from __future__ import annotations

import gc

import httpx
import pytest
from httpx_sse import aconnect_sse

from tests.assistant.conftest import ServedFake, new_conversation
from tests.factories import make_account

pytestmark = pytest.mark.usefixtures("clean_state")

RUNS = 10


async def test_streamed_runs_leave_almost_no_cyclic_garbage(
    client: httpx.AsyncClient, fake: ServedFake
) -> None:
    alice = await make_account(client)
    conversation = await new_conversation(client, alice)

    async def stream() -> list[str]:
        async with aconnect_sse(
            client, "POST", f"/api/v1/assistant/conversations/{conversation}/messages",
            json={"content": "hi"}, headers={**alice.headers, "Accept": "text/event-stream"},
        ) as source:  # fmt: skip
            return [sse.event async for sse in source.aiter_sse()]

    assert (await stream())[-1] == "done"  # warm: first-use caches and pools fill here
    gc.collect()
    gc.disable()
    try:
        for _ in range(RUNS):
            assert (await stream())[-1] == "done"
        found = gc.collect()
    finally:
        gc.enable()
    # Before the run path's statements were built once and its SSE response stopped
    # cancelling tasks, each run left several hundred objects here.
    assert found / RUNS < 60, f"{found / RUNS:.0f} objects in reference cycles per run"
