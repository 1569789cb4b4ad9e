"""The ingest workflow on a real worker: text, Markdown, HTML and PDF in English and
Chinese end ready and searchable; an embedder that refuses fails the document with a
reason and a dead letter; a worker process killed mid-embedding still completes the chord
exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import text

from steward.platform.resources import Resources
from tests.assistant.conftest import ServedFake
from tests.conftest import app_client, make_settings
from tests.engines import EngineSet
from tests.factories import Account, make_account
from tests.knowledge.conftest import embedder_settings
from tests.waiting import wait_until
from tests.workers import running_worker

pytestmark = pytest.mark.slow

DOCS = "/api/v1/knowledge/documents"
SEARCH = "/api/v1/knowledge/search"


def tiny_pdf(lines: list[str]) -> bytes:
    """A one-page PDF with `lines` in Helvetica (ASCII), written by hand: the test makes its
    own PDF rather than trusting a fixture file."""
    stream = "BT /F1 12 Tf 72 720 Td 14 TL " + " ".join(
        "(" + line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") + ") '"
        for line in lines
    ) + " ET"  # fmt: skip
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream)} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += b"".join(f"{offset:010d} 00000 n \n".encode() for offset in offsets)
    out += (
        f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    )
    return bytes(out)


@pytest.fixture
async def client(vector_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(vector_app) as http:
        yield http


async def settled(http: httpx.AsyncClient, account: Account, document_id: str) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        body: dict[str, Any] = (
            await http.get(f"{DOCS}/{document_id}", headers=account.headers)
        ).json()
        return body if body["status"] in ("ready", "failed") else None

    result: dict[str, Any] = await wait_until(done, within_s=60, what=f"document {document_id}")
    return result


async def test_every_format_in_both_languages_is_ingested_and_found(
    client: httpx.AsyncClient, vector_engines: EngineSet
) -> None:
    with running_worker(vector_engines):  # the offline embedder
        await _every_format(client)


async def _every_format(client: httpx.AsyncClient) -> None:
    alice = await make_account(client)
    uploads: dict[str, dict[str, Any]] = {
        "text": {"json": {"title": "Garden notes", "text": "Tomatoes need six hours of sun "
                          "and deep watering twice a week.\n\nBasil grows well next to them."}},
        "markdown": {"files": {"file": ("bikes.md", "# Bicycle care\n\nOil the chain every "
                     "two hundred kilometres and check tyre pressure weekly.\n",
                     "text/markdown")}},
        "html": {"files": {"file": ("tea.html", "<html><head><style>p{}</style></head><body>"
                 "<h1>茶的冲泡</h1><p>绿茶用八十度的水冲泡，浸泡两到三分钟。</p><script>x()</script>"
                 "</body></html>", "text/html")}},
        "pdf": {"files": {"file": ("boiler.pdf", tiny_pdf([
            "Boiler maintenance", "Bleed the radiators every autumn before the heating season.",
            "The boiler pressure should read between one and two bar."]), "application/pdf")}},
        "chinese": {"json": {"title": "搬家清单", "text": "搬家前一周通知物业，预约电梯。"
                             "\n\n打包时把易碎物品用报纸包好。"}},
    }  # fmt: skip
    ids = {}
    for name, request in uploads.items():
        response = await client.post(DOCS, headers=alice.headers, **request)
        assert response.status_code == 202, (name, response.text)
        ids[name] = response.json()["id"]
    for name, document_id in ids.items():
        document = await settled(client, alice, document_id)
        assert document["status"] == "ready", (name, document)
        assert document["chunk_count"] >= 1
    assert (await client.get(f"{DOCS}/{ids['html']}", headers=alice.headers)).json()[
        "media_type"] == "text/html"  # fmt: skip
    questions = {
        "how often should I oil my bike chain": "markdown",
        "what pressure should the boiler have": "pdf",
        "绿茶用多少度的水": "html",
        "搬家要通知谁": "chinese",
        "how much sun do tomatoes need": "text",
    }
    for question, name in questions.items():
        found = (await client.get(SEARCH, params={"q": question}, headers=alice.headers)).json()
        assert found["items"][0]["document_id"] == ids[name], (question, found)
    html = (await client.get(SEARCH, params={"q": "绿茶"}, headers=alice.headers)).json()
    assert "x()" not in html["items"][0]["text"] and "p{}" not in html["items"][0]["text"]
    assert html["items"][0]["heading"] == "茶的冲泡"


async def test_an_embedder_that_refuses_fails_the_document_with_a_reason(
    client: httpx.AsyncClient, vector_engines: EngineSet, fake: ServedFake,
    vector_settings: Any,
) -> None:  # fmt: skip
    fake.embedding_status = 400
    env = {
        "EMBEDDING_PROVIDERS": orjson.dumps(
            embedder_settings(fake.url)["embedding_providers"]
        ).decode()
    }
    with running_worker(vector_engines, env):
        alice = await make_account(client)
        response = await client.post(DOCS, json={"title": "t", "text": "Some words to embed."},
                                     headers=alice.headers)  # fmt: skip
        document = await settled(client, alice, response.json()["id"])
    assert document["status"] == "failed"
    assert "fake refused the request (400)" in document["error"]
    assert fake.embedding_inputs >= 1
    resources = Resources.open(vector_settings)

    async def letters() -> list[str]:
        async with resources.transaction() as session:
            rows = await session.execute(text("SELECT task_name FROM dead_letters"))
            return [row[0] for row in rows]

    try:
        assert await wait_until(letters, what="the dead letter") == ["steward.ingest.embed"]
    finally:
        await resources.close()


def _pool_children(worker: subprocess.Popen[bytes]) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(worker.pid)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


async def test_a_worker_killed_mid_ingest_still_finishes_the_document_once(
    client: httpx.AsyncClient, vector_engines: EngineSet, fake: ServedFake,
    vector_settings: Any,
) -> None:  # fmt: skip
    fake.embedding_delay_s = 0.5
    providers = embedder_settings(fake.url)["embedding_providers"]
    env = {"EMBEDDING_PROVIDERS": orjson.dumps(providers).decode(), "KNOWLEDGE_EMBED_BATCH": "2",
           "KNOWLEDGE_CHUNK_TOKENS": "32", "KNOWLEDGE_CHUNK_OVERLAP_TOKENS": "0"}  # fmt: skip
    body = "\n\n".join(f"Paragraph {i} talks about topic number {i} at some length here."
                       for i in range(16))  # fmt: skip
    redis = Redis.from_url(vector_engines.redis_url)
    with running_worker(vector_engines, env) as (_, worker):
        alice = await make_account(client)
        async with redis.pubsub() as events:
            await events.subscribe(f"user:{alice.id}")
            await events.get_message(timeout=1)  # the confirmation
            response = await client.post(DOCS, json={"title": "long", "text": body},
                                         headers=alice.headers)  # fmt: skip
            document_id = response.json()["id"]
            await wait_until(lambda: fake.embedding_inputs > 0, within_s=30,
                             what="embedding to start")  # fmt: skip
            children = _pool_children(worker)
            assert children
            for pid in children:  # every pool process, mid-request
                os.kill(pid, signal.SIGKILL)
            document = await settled(client, alice, document_id)
            await asyncio.sleep(1.0)  # any duplicate callback would have come by now
            seen: list[dict[str, Any]] = []
            while (message := await events.get_message(timeout=0.5)) is not None:
                seen.append(orjson.loads(message["data"]))
    await redis.aclose()
    assert document["status"] == "ready", document
    ready = [e for e in seen if e["type"] == "knowledge.document"
             and e["document"]["status"] == "ready"]  # fmt: skip
    assert len(ready) == 1, seen
    assert any(e["type"] == "knowledge.progress" for e in seen)
    resources = Resources.open(make_settings(vector_engines, **embedder_settings(fake.url)))
    try:
        async with resources.transaction() as session:
            counts = await session.execute(
                text("SELECT (SELECT count(*) FROM knowledge_chunks), "
                     "(SELECT count(*) FROM knowledge_embeddings)")
            )  # fmt: skip
            chunks, vectors = counts.one()
    finally:
        await resources.close()
    assert chunks == document["chunk_count"] == vectors
    assert chunks >= 8
    assert fake.embedding_inputs > chunks  # the killed batches were embedded again


async def test_two_first_batches_of_a_new_dimension_do_not_deadlock(
    vector_settings: Any, vector_state: None
) -> None:
    """A new model's first two batches, each writing its vectors (ROW EXCLUSIVE) in a
    transaction that also makes the dimension's index (SHARE): one makes it, the other
    waits for it and writes after; PostgreSQL used to find a deadlock and fail one."""
    from sqlalchemy import text

    from steward.knowledge import ingestion
    from steward.platform.resources import Resources

    dimensions = 24
    resources = Resources.open(vector_settings)
    both_inside = asyncio.Barrier(2)

    async def first_batch() -> None:
        async with resources.transaction() as session:
            await both_inside.wait()
            await ingestion._ensure_index(session, dimensions)
            # What the batch's INSERT takes on the table, held while the other arrives.
            await session.execute(text("LOCK TABLE knowledge_embeddings IN ROW EXCLUSIVE MODE"))
            await asyncio.sleep(0.3)

    try:
        async with asyncio.timeout(20):
            await asyncio.gather(first_batch(), first_batch())
        async with resources.transaction() as session:
            made = await session.execute(text(
                f"SELECT to_regclass('ix_knowledge_embeddings_{dimensions}')"))  # fmt: skip
            assert made.scalar() is not None
    finally:
        ingestion._INDEXED.discard(dimensions)
        async with resources.transaction() as session:
            await session.execute(
                text(f"DROP INDEX IF EXISTS ix_knowledge_embeddings_{dimensions}")
            )
        await resources.close()
