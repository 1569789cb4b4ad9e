"""Celery tasks of ingestion, on the `ingest` queue: `document` prepares (extracts, chunks)
and starts a chord of `embed` batches whose callback is `finish`; `reap` (beat) fails what
never finished. A step that gives up fails the document with its reason (and leaves a dead
letter), because a chord whose member was rejected never calls back."""

from __future__ import annotations

import uuid
from typing import Any

import structlog
from celery import chord, group, shared_task

from steward.jobs import runtime
from steward.jobs.base import StewardTask, TransientError
from steward.knowledge import ingestion
from steward.knowledge.embedders import EmbeddingError
from steward.knowledge.service import INGEST_TASK
from steward.platform.resources import Resources

log = structlog.get_logger(__name__)


class IngestTask(StewardTask):
    """Its first argument is the document id; giving up fails that document."""

    def gave_up(self, exc: BaseException, args: Any, kwargs: Any) -> None:
        document_id = uuid.UUID(str(args[0] if args else kwargs["document_id"]))
        reason = str(exc) or type(exc).__name__
        cause = exc.__cause__ if isinstance(exc, TransientError) else None
        if cause is not None:
            reason = str(cause) or type(cause).__name__

        async def work(resources: Resources) -> bool:
            return await ingestion.fail(resources, document_id, reason)

        runtime.run(work)


@shared_task(name=INGEST_TASK, base=IngestTask)
def ingest_document(document_id: str) -> int:
    """Prepare the document and start embedding it; returns the number of batches."""
    parsed = uuid.UUID(document_id)

    async def work(resources: Resources) -> ingestion.Prepared | None:
        return await ingestion.prepare(resources, parsed)

    prepared = runtime.run(work)
    if prepared is None:
        return 0
    if prepared.space is None or not prepared.batches:
        finish_document.delay(document_id, prepared.space)
        return 0
    header = group(embed_chunks.s(document_id, prepared.space, batch) for batch in prepared.batches)
    chord(header)(finish_document.si(document_id, prepared.space))
    return len(prepared.batches)


@shared_task(name="steward.ingest.embed", base=IngestTask)
def embed_chunks(document_id: str, space: str, chunk_ids: list[str]) -> int:
    async def work(resources: Resources) -> int:
        return await ingestion.embed_batch(resources, uuid.UUID(document_id), space, chunk_ids)

    try:
        return runtime.run(work)
    except EmbeddingError as exc:
        if exc.transient:
            raise TransientError(str(exc)) from exc
        raise


@shared_task(name="steward.ingest.finish", base=IngestTask)
def finish_document(document_id: str, space: str | None) -> str:
    """The chord's callback: mark the document ready (once, whoever calls)."""

    async def work(resources: Resources) -> str:
        return await ingestion.finish(resources, uuid.UUID(document_id), space)

    outcome = runtime.run(work)
    if outcome == "incomplete":  # a member still running (redelivered): try again later
        raise TransientError("some chunks have no vector yet")
    return outcome


@shared_task(name="steward.ingest.reap", base=StewardTask)
def reap_ingestion() -> int:
    """Beat: ingestions unfinished after KNOWLEDGE_STUCK_AFTER_S are marked failed."""
    reaped = runtime.run(ingestion.reap)
    if reaped:
        log.warning("knowledge.ingestion_reaped", documents=reaped)
    return reaped
