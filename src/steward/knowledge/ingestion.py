"""The steps of ingesting a document, each its own transaction, safe to run again: a
redelivered step finds its work done (chunk ids are derived from the document and position,
vectors are upserted) and a state only moves forward (queued -> processing -> ready or
failed), so the document is announced ready exactly once however often a step ran.

knowledge/tasks.py strings them into the Celery workflow: prepare, a group of embedding
batches, then `finish` as the chord's callback; `fail` when a step gives up, `reap` for
what no step will ever finish.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import anyio.to_thread
import structlog
from sqlalchemy import func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from steward.knowledge import lexical
from steward.knowledge.chunking import Piece, chunk
from steward.knowledge.extraction import ExtractionError, extract
from steward.knowledge.models import Chunk, Document, DocumentStatus
from steward.knowledge.service import Knowledge, document_changed, vector_literal
from steward.platform.pubsub import user_channel
from steward.platform.resources import Resources
from steward.platform.transactions import after_commit

log = structlog.get_logger(__name__)

_UNFINISHED = (DocumentStatus.QUEUED, DocumentStatus.PROCESSING)


def chunk_id(document_id: uuid.UUID, position: int) -> uuid.UUID:
    """The same chunk gets the same id in every attempt."""
    return uuid.uuid5(document_id, str(position))


@dataclass(frozen=True, slots=True)
class Prepared:
    space: str | None  # None: no vectors on this database; the document is lexical only
    batches: list[list[str]]  # chunk ids still without a vector in `space`


async def _set_status(
    session: AsyncSession, document_id: uuid.UUID, status: DocumentStatus, **values: object
) -> Document | None:
    """Move an unfinished document to `status`; None if it is gone or already finished."""
    moved = (
        await session.execute(
            update(Document)
            .where(Document.id == document_id, Document.status.in_(_UNFINISHED))
            .values(status=status, updated_at=func.now(), **values)
            .returning(Document)
        )
    ).scalar_one_or_none()
    if moved is not None:
        document_changed(session, moved)
    return moved


async def prepare(resources: Resources, document_id: uuid.UUID) -> Prepared | None:
    """Extract and chunk the upload (once), and say which chunks still need vectors.
    None when there is nothing to do (deleted, finished, or failed here)."""
    settings = resources.settings
    knowledge = resources.get(Knowledge)
    async with resources.transaction() as session:
        document = (
            await session.execute(
                select(Document).where(Document.id == document_id).with_for_update()
            )
        ).scalar_one_or_none()
        if document is None or document.status not in _UNFINISHED:
            return None
        vectors, _ = await knowledge.vectors(session)
        space = knowledge.embedder.space if vectors else None
        count = document.chunk_count
        if document.status == DocumentStatus.QUEUED or count == 0:
            content = (
                await session.execute(select(Document.content).where(Document.id == document_id))
            ).scalar_one()
            try:
                sections = extract(document.media_type, content or b"")
                pieces: list[Piece] = await anyio.to_thread.run_sync(
                    lambda: chunk(sections, size=settings.knowledge_chunk_tokens,
                                  overlap=settings.knowledge_chunk_overlap_tokens)
                )  # fmt: skip
            except ExtractionError as exc:
                await _set_status(session, document_id, DocumentStatus.FAILED, error=str(exc))
                return None
            if len(pieces) > settings.knowledge_max_chunks:
                await _set_status(session, document_id, DocumentStatus.FAILED,
                                  error=f"the document has {len(pieces)} chunks; the limit "
                                  f"is {settings.knowledge_max_chunks}")  # fmt: skip
                return None
            await _store_chunks(session, document_id, pieces)
            count = len(pieces)
        await _set_status(session, document_id, DocumentStatus.PROCESSING, chunk_count=count,
                          embedding_space=space, attempts=Document.attempts + 1)  # fmt: skip
        if space is None:
            return Prepared(None, [])
        missing = await session.execute(
            text(
                "SELECT c.id FROM knowledge_chunks c WHERE c.document_id = :d AND NOT EXISTS "
                "(SELECT 1 FROM knowledge_embeddings e WHERE e.chunk_id = c.id "
                "AND e.space = :space) ORDER BY c.position"
            ),
            {"d": document_id, "space": space},
        )
        ids = [str(row[0]) for row in missing]
    size = settings.knowledge_embed_batch
    return Prepared(space, [ids[i : i + size] for i in range(0, len(ids), size)])


async def _store_chunks(session: AsyncSession, document_id: uuid.UUID, pieces: list[Piece]) -> None:
    rows = [
        {"id": chunk_id(document_id, position), "document_id": document_id,
         "position": position, "heading": piece.heading, "text": piece.text,
         "tokens": piece.tokens, "lexemes": func.to_tsvector(
             "simple", lexical.document(f"{piece.heading}\n{piece.text}"))}
        for position, piece in enumerate(pieces)
    ]  # fmt: skip
    for start in range(0, len(rows), 500):
        await session.execute(
            insert(Chunk).values(rows[start : start + 500]).on_conflict_do_nothing()
        )


async def embed_batch(
    resources: Resources, document_id: uuid.UUID, space: str, chunk_ids: list[str]
) -> int:
    """Embed these chunks (those still without a vector) and report progress; returns how
    many were embedded. Raises EmbeddingError when the embedder fails."""
    knowledge = resources.get(Knowledge)
    if knowledge.embedder.space != space:
        # The model changed since the document was prepared: finish() sees the gap and
        # the reaper or a re-upload starts over in the new space.
        log.warning("knowledge.space_changed", document_id=str(document_id), space=space)
        return 0
    async with resources.transaction() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT c.id, c.heading, c.text FROM knowledge_chunks c "
                    "WHERE c.id = ANY(CAST(:ids AS uuid[])) AND NOT EXISTS (SELECT 1 FROM "
                    "knowledge_embeddings e WHERE e.chunk_id = c.id AND e.space = :space)"
                ),
                {"ids": chunk_ids, "space": space},
            )
        ).all()
    if not rows:
        return 0
    vectors = await knowledge.embedder.embed(
        [f"{row.heading}\n{row.text}" if row.heading else row.text for row in rows]
    )
    async with resources.transaction() as session:
        # Before the INSERT: creating the index takes a SHARE lock on the table, which two
        # transactions that had both written rows (ROW EXCLUSIVE) would wait for from each
        # other: a deadlock, seen when a new model's first two batches landed together.
        await _ensure_index(session, len(vectors[0]))
        await session.execute(
            text(
                # Joined with the chunks: a document deleted meanwhile takes its chunks
                # with it, and their vectors are simply not stored.
                "INSERT INTO knowledge_embeddings (chunk_id, space, dimensions, embedding) "
                "SELECT c.id, :space, :dims, v.embedding FROM unnest(CAST(:ids AS uuid[]), "
                "CAST(CAST(:vectors AS text[]) AS vector[])) AS v(id, embedding) "
                "JOIN knowledge_chunks c ON c.id = v.id "
                "ON CONFLICT (chunk_id, space) DO UPDATE SET embedding = EXCLUDED.embedding, "
                "dimensions = EXCLUDED.dimensions"
            ),
            {"ids": [str(row.id) for row in rows], "space": space, "dims": len(vectors[0]),
             "vectors": [vector_literal(v) for v in vectors]},
        )  # fmt: skip
        progress = (
            await session.execute(
                text(
                    "SELECT d.owner_id, d.chunk_count, (SELECT count(*) FROM knowledge_chunks c "
                    "JOIN knowledge_embeddings e ON e.chunk_id = c.id AND e.space = :space "
                    "WHERE c.document_id = d.id) AS embedded "
                    "FROM knowledge_documents d WHERE d.id = :d"
                ),
                {"d": document_id, "space": space},
            )
        ).one_or_none()
        if progress is not None:
            after_commit(session).publish(
                user_channel(progress.owner_id),
                {"type": "knowledge.progress", "document_id": str(document_id),
                 "embedded": progress.embedded, "chunks": progress.chunk_count},
            )  # fmt: skip
    return len(rows)


# Dimensions whose index this process has seen exist: one lookup per process, not per batch.
_INDEXED: set[int] = set()
# The advisory lock's first key: "the index of a vector dimension" (the second is the dimension).
_INDEX_LOCK = 0x53_74_77_49  # "StwI"


async def _ensure_index(session: AsyncSession, dimensions: int) -> None:
    """Each dimension's vectors get their own partial HNSW index (the migration makes the
    offline embedder's 256); made the first time a model of another dimension is used."""
    if dimensions in _INDEXED:
        return
    name = f"ix_knowledge_embeddings_{int(dimensions)}"
    exists = text("SELECT to_regclass(:name)")
    if (await session.execute(exists, {"name": name})).scalar() is None:
        # One creator per dimension: the others wait here, holding no lock on the table,
        # and find the index made once the creator commits.
        await session.execute(text("SELECT pg_advisory_xact_lock(:space, :dims)"),
                              {"space": _INDEX_LOCK, "dims": int(dimensions)})  # fmt: skip
        if (await session.execute(exists, {"name": name})).scalar() is None:
            await session.execute(
                text(
                    f"CREATE INDEX IF NOT EXISTS {name} ON knowledge_embeddings USING hnsw "
                    f"((embedding::vector({int(dimensions)})) vector_cosine_ops) "
                    f"WHERE dimensions = {int(dimensions)}"
                )
            )

    async def remember() -> None:
        _INDEXED.add(dimensions)

    after_commit(session).call(remember)


async def finish(resources: Resources, document_id: uuid.UUID, space: str | None) -> str:
    """Mark the document ready if every chunk has its vector. Returns "ready" (this call
    did it), "settled" (gone or finished before) or "incomplete" (vectors still missing)."""
    async with resources.transaction() as session:
        if space is not None:
            missing = (
                await session.execute(
                    text(
                        "SELECT count(*) FROM knowledge_chunks c WHERE c.document_id = :d AND "
                        "NOT EXISTS (SELECT 1 FROM knowledge_embeddings e WHERE "
                        "e.chunk_id = c.id AND e.space = :space)"
                    ),
                    {"d": document_id, "space": space},
                )
            ).scalar_one()
            if missing:
                settled = await session.execute(
                    select(Document.id).where(
                        Document.id == document_id, Document.status.in_(_UNFINISHED)
                    )
                )
                return "incomplete" if settled.scalar() is not None else "settled"
        done = await _set_status(session, document_id, DocumentStatus.READY, content=None)
    if done is None:
        return "settled"
    log.info("knowledge.ready", document_id=str(document_id), chunks=done.chunk_count)
    return "ready"


async def fail(resources: Resources, document_id: uuid.UUID, reason: str) -> bool:
    async with resources.transaction() as session:
        failed = await _set_status(session, document_id, DocumentStatus.FAILED, error=reason[:2000])
    if failed is not None:
        log.warning("knowledge.failed", document_id=str(document_id), reason=reason[:200])
    return failed is not None


async def reap(resources: Resources) -> int:
    """Unfinished ingestions older than KNOWLEDGE_STUCK_AFTER_S fail: their messages were
    lost, or they keep dying; the owner sees why and may upload again."""
    older = datetime.now(UTC) - timedelta(seconds=resources.settings.knowledge_stuck_after_s)
    async with resources.transaction() as session:
        stuck = (
            await session.execute(
                select(Document.id).where(
                    Document.status.in_(_UNFINISHED), Document.updated_at < older
                )
            )
        ).scalars()
        reaped = 0
        for document_id in stuck:
            reason = "ingestion did not finish in time; upload the document again"
            reaped += await _set_status(session, document_id, DocumentStatus.FAILED,
                                        error=reason) is not None  # fmt: skip
    return reaped
