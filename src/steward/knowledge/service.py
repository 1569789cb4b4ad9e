"""Knowledge rules: documents per owner (plus those an admin shares with everyone), an
upload recorded and its ingestion enqueued in one transaction, idempotent by content, and
search by vector, by lexical terms, or both fused by reciprocal rank."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.jobs import service as jobs
from steward.knowledge import lexical
from steward.knowledge.embedders import Embedder, EmbeddingError, embedder_for
from steward.knowledge.models import Document, DocumentStatus
from steward.knowledge.schemas import DocumentRead, SearchHit, SearchMode
from steward.platform.errors import NotFound, ServiceUnavailable, UnprocessableContent
from steward.platform.pagination import newest_first
from steward.platform.pubsub import user_channel
from steward.platform.resources import Resources, provide
from steward.platform.transactions import after_commit

INGEST_TASK = "steward.ingest.document"
# Reciprocal rank fusion's constant (Cormack et al. 2009): damps the head of each list.
_RRF_K = 60


class Knowledge:
    """The process's embedder (one HTTP pool), and whether this database has pgvector."""

    def __init__(self, resources: Resources) -> None:
        self.embedder: Embedder = embedder_for(resources.settings)
        self._vectors: tuple[bool, bool] | None = None

    async def vectors(self, session: AsyncSession) -> tuple[bool, bool]:
        """(the embeddings table exists, pgvector can filter during an HNSW scan)."""
        if self._vectors is None:
            row = (
                await session.execute(
                    text(
                        "SELECT to_regclass('knowledge_embeddings') IS NOT NULL, "
                        "coalesce((SELECT string_to_array(extversion, '.')::int[] >= '{0,8}' "
                        "FROM pg_extension WHERE extname = 'vector'), false)"
                    )
                )
            ).one()
            self._vectors = (bool(row[0]), bool(row[1]))
        return self._vectors

    async def aclose(self) -> None:
        closing = getattr(self.embedder, "aclose", None)
        if closing is not None:
            await closing()


provide(Knowledge, Knowledge)


def document_changed(session: AsyncSession, document: Document) -> None:
    """Announce the document's state on its owner's channel once the transaction commits."""
    after_commit(session).publish(
        user_channel(document.owner_id),
        {
            "type": "knowledge.document",
            "document": DocumentRead.model_validate(document).model_dump(mode="json"),
        },
    )


@dataclass(frozen=True, slots=True)
class Created:
    document: Document
    created: bool
    job_id: str | None = None  # the ingestion this call started, if it started one


async def create(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    title: str,
    media_type: str,
    content: bytes,
    shared: bool,
) -> Created:
    """Record the upload and enqueue its ingestion; the same content again from the same
    owner is the same document (a failed one is queued again)."""
    digest = hashlib.sha256(content).hexdigest()
    inserted = (
        await session.execute(
            insert(Document)
            .values(
                id=uuid.uuid4(),
                owner_id=owner_id,
                title=title,
                media_type=media_type,
                content_hash=digest,
                byte_size=len(content),
                content=content,
                shared=shared,
            )
            .on_conflict_do_nothing(constraint="uq_knowledge_documents_content")
            .returning(Document.id)
        )
    ).scalar_one_or_none()
    if inserted is None:
        existing = (
            await session.execute(
                select(Document)
                .where(Document.owner_id == owner_id, Document.content_hash == digest)
                .with_for_update()
            )
        ).scalar_one()
        if existing.status != DocumentStatus.FAILED:
            return Created(existing, created=False)
        await session.execute(
            update(Document)
            .where(Document.id == existing.id)
            .values(status=DocumentStatus.QUEUED, error=None, title=title, content=content,
                    updated_at=func.now())
        )  # fmt: skip
        await session.refresh(existing)
        document = existing
    else:
        document = await session.get_one(Document, inserted)
    job_id = await jobs.enqueue(
        session, task=INGEST_TASK, args=[str(document.id)], owner_id=owner_id
    )
    document_changed(session, document)
    return Created(document, created=inserted is not None, job_id=job_id)


async def list_documents(
    session: AsyncSession, *, owner_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Document], str | None]:
    return await newest_first(
        session,
        select(Document).where(Document.owner_id == owner_id),
        at=Document.created_at,
        key=Document.id,
        limit=limit,
        cursor=cursor,
    )


async def get(
    session: AsyncSession, *, owner_id: uuid.UUID, document_id: uuid.UUID, write: bool = False
) -> Document:
    """The caller's document, or (to read) a shared one; 404 for anyone else's."""
    visible = (
        Document.owner_id == owner_id
        if write
        else or_(Document.owner_id == owner_id, Document.shared)
    )
    query = select(Document).where(Document.id == document_id, visible)
    if write:
        query = query.with_for_update()
    document = (await session.execute(query)).scalar_one_or_none()
    if document is None:
        raise NotFound("no such document")
    return document


async def remove(session: AsyncSession, document: Document) -> None:
    """Delete the document; its chunks and their vectors go with it (ON DELETE CASCADE)."""
    await session.execute(delete(Document).where(Document.id == document.id))
    after_commit(session).publish(
        user_channel(document.owner_id),
        {"type": "knowledge.document.deleted", "document_id": str(document.id)},
    )


async def set_shared(session: AsyncSession, document: Document, shared: bool) -> Document:
    await session.execute(update(Document).where(Document.id == document.id).values(shared=shared))
    await session.refresh(document)
    document_changed(session, document)
    return document


# -- search -------------------------------------------------------------------------------

_VISIBLE = "d.status = 'ready' AND (d.owner_id = :owner OR d.shared)"
_SELECT = "c.id AS chunk_id, c.document_id, d.title, c.heading, c.text"


def _vector_sql(dimensions: int) -> str:
    # The cast's dimension must be a literal to match the partial index's expression; it
    # is an int the embedder produced, never user input.
    cast = f"vector({int(dimensions)})"
    # Constants and an int only; every value is a bound parameter.
    return f"""
        SELECT {_SELECT}, (e.embedding::{cast}) <=> CAST(CAST(:q AS text) AS {cast}) AS distance
        FROM knowledge_embeddings e
        JOIN knowledge_chunks c ON c.id = e.chunk_id
        JOIN knowledge_documents d ON d.id = c.document_id
        WHERE e.dimensions = {int(dimensions)} AND e.space = :space AND {_VISIBLE}
        ORDER BY (e.embedding::{cast}) <=> CAST(CAST(:q AS text) AS {cast})
        LIMIT :k
    """  # noqa: S608


_LEXICAL_SQL = text(f"""
    SELECT {_SELECT}, ts_rank_cd(c.lexemes, query) AS rank
    FROM knowledge_chunks c
    JOIN knowledge_documents d ON d.id = c.document_id,
         to_tsquery('simple', :q) query
    WHERE c.lexemes @@ query AND {_VISIBLE}
    ORDER BY rank DESC, c.id
    LIMIT :k
""")  # noqa: S608 - constants only; values are bound parameters


def vector_literal(vector: list[float]) -> str:
    return "[" + ",".join(repr(float(x)) for x in vector) + "]"


async def _vector_hits(
    session: AsyncSession, knowledge: Knowledge, *, owner_id: uuid.UUID, q: str, k: int,
    exact: bool = False,
) -> list[SearchHit]:  # fmt: skip
    table, filtered_scan = await knowledge.vectors(session)
    if not table:  # a property of this deployment, not an outage: the caller's 422
        raise UnprocessableContent(
            "mode=vector needs pgvector, which this server's database lacks; use hybrid or "
            "lexical",
            errors=[{"loc": ["query", "mode"], "msg": "vector search unavailable",
                     "type": "unavailable"}],
        )  # fmt: skip
    try:
        [vector] = await knowledge.embedder.embed([q])
    except EmbeddingError as exc:
        raise ServiceUnavailable(f"the embedder is unavailable: {exc}") from exc
    if exact:  # the benchmark's baseline: a sequential scan, no index
        await session.execute(text("SET LOCAL enable_indexscan = off"))
    elif filtered_scan:
        # Keep scanning the HNSW graph until k rows pass the owner filter (pgvector 0.8).
        await session.execute(text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
        await session.execute(text("SET LOCAL hnsw.ef_search = 100"))
    rows = await session.execute(
        text(_vector_sql(len(vector))),
        {"q": vector_literal(vector), "space": knowledge.embedder.space, "owner": owner_id,
         "k": k},
    )  # fmt: skip
    hits = [_hit(row, 1.0 - float(row.distance)) for row in rows]
    return sorted(hits, key=lambda hit: -hit.score)  # relaxed order: nearly sorted


async def _lexical_hits(
    session: AsyncSession, *, owner_id: uuid.UUID, q: str, k: int
) -> list[SearchHit]:
    query = lexical.query(q)
    if query is None:
        return []
    rows = await session.execute(_LEXICAL_SQL, {"q": query, "owner": owner_id, "k": k})
    return [_hit(row, float(row.rank)) for row in rows]


def _hit(row: Any, score: float) -> SearchHit:
    return SearchHit(document_id=row.document_id, chunk_id=row.chunk_id, title=row.title,
                     heading=row.heading, text=row.text, score=score)  # fmt: skip


def fuse(rankings: list[list[SearchHit]], k: int) -> list[SearchHit]:
    """Reciprocal rank fusion: each list gives 1 / (60 + rank) to its hits; the sum ranks."""
    scores: dict[uuid.UUID, float] = {}
    hits: dict[uuid.UUID, SearchHit] = {}
    for ranking in rankings:
        for rank, hit in enumerate(ranking, start=1):
            scores[hit.chunk_id] = scores.get(hit.chunk_id, 0.0) + 1.0 / (_RRF_K + rank)
            hits.setdefault(hit.chunk_id, hit)
    best = sorted(scores, key=lambda chunk_id: -scores[chunk_id])[:k]
    return [hits[chunk_id].model_copy(update={"score": scores[chunk_id]}) for chunk_id in best]


async def search(
    session: AsyncSession,
    knowledge: Knowledge,
    *,
    owner_id: uuid.UUID,
    q: str,
    k: int,
    mode: SearchMode,
    exact: bool = False,
) -> tuple[list[SearchHit], SearchMode]:
    """The k best chunks the owner may read, and the mode that ranked them (hybrid falls
    back to lexical when vectors are unavailable)."""
    if mode is SearchMode.LEXICAL:
        return await _lexical_hits(session, owner_id=owner_id, q=q, k=k), mode
    if mode is SearchMode.VECTOR:
        return await _vector_hits(session, knowledge, owner_id=owner_id, q=q, k=k,
                                  exact=exact), mode  # fmt: skip
    depth = max(4 * k, 20)
    lexical_hits = await _lexical_hits(session, owner_id=owner_id, q=q, k=depth)
    try:
        vector_hits = await _vector_hits(session, knowledge, owner_id=owner_id, q=q, k=depth)
    except (ServiceUnavailable, UnprocessableContent):
        return lexical_hits[:k], SearchMode.LEXICAL
    return fuse([vector_hits, lexical_hits], k), mode
