"""Documents and search, with the ingestion steps run in this process (the worker's
workflow is tests/knowledge/test_pipeline.py): uploads and their limits, idempotency,
ownership, search in three modes in English and Chinese, deletion."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from steward.knowledge import ingestion
from steward.platform.resources import Resources
from steward.settings import Settings
from tests.conftest import app_client
from tests.factories import Account, make_account

DOCS = "/api/v1/knowledge/documents"
SEARCH = "/api/v1/knowledge/search"

ENGLISH = """# Refunds

Customers may return any unused product within thirty days of delivery for a full refund.
The refund goes back to the original payment method within five business days.

# Shipping

Orders ship from our warehouse in Rotterdam. Express delivery reaches most of Europe in two
days; standard delivery takes a week. Tracking numbers are emailed when the parcel leaves.
"""

CHINESE = """# 会员积分

每消费一元可获得一个积分，积分在十二个月后过期。积分可以在结账时抵扣现金，一百积分抵一元。

# 售后服务

产品自签收之日起享受一年保修。保修期内出现质量问题，我们免费维修或更换。
"""


@pytest.fixture
async def client(vector_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(vector_app) as http:
        yield http


@pytest.fixture
async def resources(vector_settings: Settings) -> AsyncIterator[Resources]:
    opened = Resources.open(vector_settings)
    yield opened
    await opened.close()


async def ingest(resources: Resources, document_id: str) -> None:
    """What the worker does (prepare, embed each batch, finish), here and in order."""
    parsed = uuid.UUID(document_id)
    prepared = await ingestion.prepare(resources, parsed)
    assert prepared is not None
    for batch in prepared.batches:
        assert prepared.space is not None
        await ingestion.embed_batch(resources, parsed, prepared.space, batch)
    assert await ingestion.finish(resources, parsed, prepared.space) == "ready"


async def upload(http: httpx.AsyncClient, account: Account, title: str, body: str,
                 media_type: str = "text/markdown") -> dict[str, object]:  # fmt: skip
    response = await http.post(DOCS, json={"title": title, "text": body, "media_type": media_type},
                               headers=account.headers)  # fmt: skip
    assert response.status_code == 202, response.text
    document: dict[str, object] = response.json()
    assert document["status"] == "queued"
    return document


async def test_search_finds_the_right_chunk_in_every_mode_and_only_the_owners(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    english = await upload(client, alice, "Store policies", ENGLISH)
    chinese = await upload(client, alice, "会员手册", CHINESE)
    for document in (english, chinese):
        await ingest(resources, str(document["id"]))
    read = (await client.get(f"{DOCS}/{english['id']}", headers=alice.headers)).json()
    assert read["status"] == "ready" and read["chunk_count"] == 2
    assert read["embedding_space"] == "offline:wordllama-l2-supercat-256"
    assert read["dimensions"] is None or read["dimensions"] == 256

    questions = {
        "how long do I have to send an item back for my money": ("Refunds", english),
        "when will my parcel arrive in Europe": ("Shipping", english),
        "积分什么时候过期": ("会员积分", chinese),
        "产品坏了可以免费修吗": ("售后服务", chinese),
    }
    for mode in ("hybrid", "vector", "lexical"):
        for question, (heading, document) in questions.items():
            found = await client.get(SEARCH, params={"q": question, "k": 3, "mode": mode},
                                     headers=alice.headers)  # fmt: skip
            assert found.status_code == 200, found.text
            body = found.json()
            assert body["mode"] == mode
            best = body["items"][0]
            assert (best["heading"], best["document_id"]) == (heading, document["id"]), (
                mode, question, body["items"])  # fmt: skip
            scores = [item["score"] for item in body["items"]]
            assert scores == sorted(scores, reverse=True)

    # Bob sees none of it: not in search, 404 on the ids.
    theirs = await client.get(SEARCH, params={"q": "refund"}, headers=bob.headers)
    assert theirs.json()["items"] == []
    for verb in ("get", "delete"):
        response = await client.request(verb, f"{DOCS}/{english['id']}", headers=bob.headers)
        assert response.status_code == 404
    assert (await client.get(DOCS, headers=bob.headers)).json()["items"] == []

    # Deleting removes its chunks and vectors; search no longer finds them.
    assert (
        await client.delete(f"{DOCS}/{english['id']}", headers=alice.headers)
    ).status_code == 204
    async with resources.transaction() as session:
        left = await session.execute(
            text("SELECT (SELECT count(*) FROM knowledge_chunks), "
                 "(SELECT count(*) FROM knowledge_embeddings)")
        )  # fmt: skip
        assert tuple(left.one()) == (2, 2)  # the Chinese document's
    gone = await client.get(SEARCH, params={"q": "refund policy", "mode": "lexical"},
                            headers=alice.headers)  # fmt: skip
    assert all(item["document_id"] != english["id"] for item in gone.json()["items"])


async def test_same_content_is_the_same_document(client: httpx.AsyncClient) -> None:
    alice, bob = await make_account(client), await make_account(client)
    first = await upload(client, alice, "Policies", ENGLISH)
    body = {"title": "Again", "text": ENGLISH, "media_type": "text/markdown"}
    again = await client.post(DOCS, json=body, headers=alice.headers)
    assert again.status_code == 202
    assert again.json()["id"] == first["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # Another owner's identical text is their own document.
    theirs = await upload(client, bob, "Policies", ENGLISH)
    assert theirs["id"] != first["id"]
    listed = (await client.get(DOCS, headers=alice.headers)).json()["items"]
    assert [d["id"] for d in listed] == [first["id"]]


async def test_uploads_are_limited_and_typed(
    client: httpx.AsyncClient, vector_settings: Settings
) -> None:
    alice = await make_account(client)
    headers = alice.headers
    # Above the API's general body limit (1 MiB), within the uploads' own.
    assert vector_settings.max_body_bytes < 2_000_000 < vector_settings.knowledge_max_bytes
    large = ("A paragraph of a large manual. " * 40 + "\n\n") * 1600
    response = await client.post(DOCS, files={"file": ("manual.txt", large.encode(), "text/plain")},
                                 headers=headers)  # fmt: skip
    assert response.status_code == 202, response.text
    assert response.json()["byte_size"] == len(large.encode()) > 1_900_000
    too_big = "x" * (vector_settings.knowledge_max_bytes + 1)
    response = await client.post(DOCS, json={"title": "big", "text": too_big}, headers=headers)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    response = await client.post(DOCS, files={"file": ("big.txt", too_big.encode(), "text/plain")},
                                 headers=headers)  # fmt: skip
    assert response.status_code == 413
    response = await client.post(DOCS, files={"file": ("a.docx", b"PK\x03\x04", "application/zip")},
                                 headers=headers)  # fmt: skip
    assert response.status_code == 415
    csv = {**headers, "content-type": "text/csv"}
    response = await client.post(DOCS, content=b"hello", headers=csv)
    assert response.status_code == 415
    for bad in ({"title": "a\x00b", "text": "x"}, {"title": "", "text": "x"},
                {"title": "t", "text": ""}, {"title": "t", "text": "x", "media_type": "image/png"},
                {"title": "t", "text": "x", "owner_id": str(uuid.uuid4())}):  # fmt: skip
        response = await client.post(DOCS, json=bad, headers=headers)
        assert response.status_code == 422, (bad, response.text)
    as_json = {**headers, "content-type": "application/json"}
    response = await client.post(DOCS, content=b"{not json", headers=as_json)
    assert response.status_code == 422
    response = await client.post(DOCS, files={"other": ("a.txt", b"x", "text/plain")},
                                 headers=headers)  # fmt: skip
    assert response.status_code == 400
    # Sharing with everyone is for admins.
    shared = await client.post(DOCS, json={"title": "t", "text": "x", "shared": True},
                               headers=headers)  # fmt: skip
    assert shared.status_code == 403
    for params in ({"q": ""}, {"q": "a\x00"}, {"q": "x" * 1001}, {"q": "a", "k": 0},
                   {"q": "a", "k": 51}, {"q": "a", "mode": "fuzzy"}):  # fmt: skip
        response = await client.get(SEARCH, params=params, headers=headers)
        assert response.status_code == 422, params


async def test_a_document_deleted_mid_ingest_settles_quietly(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice = await make_account(client)
    document = await upload(client, alice, "Policies", ENGLISH)
    parsed = uuid.UUID(str(document["id"]))
    prepared = await ingestion.prepare(resources, parsed)
    assert prepared is not None
    assert prepared.space is not None
    assert prepared.batches
    deleted = await client.delete(f"{DOCS}/{document['id']}", headers=alice.headers)
    assert deleted.status_code == 204
    # The batch and the callback that were already on their way find nothing to do.
    assert await ingestion.embed_batch(resources, parsed, prepared.space, prepared.batches[0]) == 0
    assert await ingestion.finish(resources, parsed, prepared.space) == "settled"
    assert await ingestion.prepare(resources, parsed) is None
    async with resources.transaction() as session:
        left = await session.execute(text("SELECT count(*) FROM knowledge_embeddings"))
        assert left.scalar_one() == 0


async def test_extraction_failure_fails_the_document_with_its_reason(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice = await make_account(client)
    response = await client.post(
        DOCS, files={"file": ("broken.pdf", b"%PDF-1.4 not really", "application/pdf")},
        headers=alice.headers,
    )  # fmt: skip
    assert response.status_code == 202
    assert await ingestion.prepare(resources, uuid.UUID(response.json()["id"])) is None
    failed = (await client.get(f"{DOCS}/{response.json()['id']}", headers=alice.headers)).json()
    assert failed["status"] == "failed"
    assert "PDF" in failed["error"]


async def test_ingestions_that_never_finish_are_reaped(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice = await make_account(client)
    stuck = await upload(client, alice, "Stuck", ENGLISH)
    fresh = await upload(client, alice, "Fresh", CHINESE)
    async with resources.transaction() as session:
        await session.execute(
            text("UPDATE knowledge_documents SET updated_at = now() - interval '2 hours' "
                 "WHERE id = :id"), {"id": stuck["id"]},
        )  # fmt: skip
    assert await ingestion.reap(resources) == 1
    read = (await client.get(f"{DOCS}/{stuck['id']}", headers=alice.headers)).json()
    assert read["status"] == "failed"
    assert "did not finish" in read["error"]
    assert (await client.get(f"{DOCS}/{fresh['id']}", headers=alice.headers)).json()[
        "status"] == "queued"  # fmt: skip
    # Uploading the same content again queues it again.
    body = {"title": "Stuck", "text": ENGLISH, "media_type": "text/markdown"}
    again = await client.post(DOCS, json=body, headers=alice.headers)
    assert again.json()["id"] == stuck["id"]
    assert again.json()["status"] == "queued"
    assert again.json()["error"] is None


async def test_a_narrow_api_key_gets_403_and_the_service_key_no_user(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    alice = await make_account(client)
    document = await upload(client, alice, "Policies", ENGLISH)
    keys = "/api/v1/api-keys"
    created = await client.post(keys, json={"name": "todos", "scopes": ["todos:read"]},
                                headers=alice.headers)  # fmt: skip
    narrow = {"x-api-key": created.json()["secret"]}
    one = f"{DOCS}/{document['id']}"
    for method, url in (("GET", DOCS), ("GET", one), ("DELETE", one), ("GET", f"{SEARCH}?q=a")):
        response = await client.request(method, url, headers=narrow)
        assert response.status_code == 403, (method, url, response.text)
    response = await client.post(DOCS, json={"title": "t", "text": "x"}, headers=narrow)
    assert response.status_code == 403
    reader = await client.post(keys, json={"name": "r", "scopes": ["knowledge:read"]},
                               headers=alice.headers)  # fmt: skip
    read_only = {"x-api-key": reader.json()["secret"]}
    assert (await client.get(f"{DOCS}/{document['id']}", headers=read_only)).status_code == 200
    assert (await client.delete(f"{DOCS}/{document['id']}", headers=read_only)).status_code == 403
    assert (await client.get(DOCS)).status_code == 401


async def test_an_upload_names_its_ingestion_job_which_only_its_owner_reads(
    client: httpx.AsyncClient,
) -> None:
    alice, bob = await make_account(client), await make_account(client)
    document = await upload(client, alice, "Jobs", "# Jobs\n\nA job id comes back.")
    job_id = document["job_id"]
    assert isinstance(job_id, str)
    job = await client.get(f"/api/v1/jobs/{job_id}", headers=alice.headers)
    assert job.status_code == 200, job.text
    assert job.json()["name"] == "steward.ingest.document"
    assert (await client.get(f"/api/v1/jobs/{job_id}", headers=bob.headers)).status_code == 404
    # Reading the document later does not invent a job: only the upload started one.
    read = await client.get(f"{DOCS}/{document['id']}", headers=alice.headers)
    assert read.json()["job_id"] is None
