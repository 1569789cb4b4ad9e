"""Knowledge benchmarks, in process against a PostgreSQL with pgvector (the embedded one
when the machine's lacks it), with the offline embedder:

- retrieval quality on the labelled set in bench/data (each passage a document, each
  question naming its passage): recall@5 and MRR per mode (vector, lexical, hybrid) and
  language;
- ingestion throughput: the worker's steps (prepare: extract, chunk, store; embed batches;
  finish) run one after another in one process, chunks per second, with the share of time
  spent embedding; Celery's own dispatch is not in it;
- search latency at N chunks (100,000 by default): the same queries by HNSW index and by
  exact scan (`enable_indexscan = off`) in the same run, p50/p99 and their ratio, and how
  many of the exact top 5 the index finds (recall of the approximate search).
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import text

ROOT = Path(__file__).resolve().parents[1]
LABELLED = ROOT / "bench" / "data" / "knowledge_labelled.json"
MODES = ("vector", "lexical", "hybrid")


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def _user(resources: Any) -> uuid.UUID:
    from steward.accounts.models import User

    async with resources.transaction() as session:
        user = User(email=f"bench-{uuid.uuid4().hex[:8]}@example.com", password_hash="x")
        session.add(user)
        await session.flush()
        return user.id


async def _ingest(resources: Any, owner: uuid.UUID, title: str, body: str) -> str:
    """Upload and run the worker's steps (timed in STEPS); returns the document id."""
    from steward.knowledge import ingestion, service

    async with resources.transaction() as session:
        created = await service.create(
            session,
            owner_id=owner,
            title=title,
            media_type="text/plain",
            content=body.encode(),
            shared=False,
        )
        document_id = created.document.id
    prepared = await ingestion.prepare(resources, document_id)
    assert prepared is not None
    assert prepared.space is not None, "the bench needs pgvector"
    embedding = 0.0
    chunks = 0
    for batch in prepared.batches:
        started = time.perf_counter()
        chunks += await ingestion.embed_batch(resources, document_id, prepared.space, batch)
        embedding += time.perf_counter() - started
    assert await ingestion.finish(resources, document_id, prepared.space) == "ready"
    STEPS["embedding_s"] += embedding
    STEPS["chunks"] += chunks
    return str(document_id)


STEPS = {"embedding_s": 0.0, "chunks": 0}


async def quality(resources: Any) -> dict[str, dict[str, dict[str, float]]]:
    from steward.knowledge import service
    from steward.knowledge.schemas import SearchMode

    data = json.loads(LABELLED.read_text())
    owner = await _user(resources)
    documents: dict[str, str] = {}
    for passage in data["passages"]:
        document_id = await _ingest(resources, owner, passage["title"], passage["text"])
        documents[document_id] = passage["id"]
    knowledge = resources.get(service.Knowledge)
    results: dict[str, dict[str, dict[str, float]]] = {}
    for mode in MODES:
        ranks: dict[str, list[int | None]] = {"en": [], "zh": []}
        for question in data["questions"]:
            async with resources.transaction() as session:
                hits, _ = await service.search(
                    session, knowledge, owner_id=owner, q=question["q"], k=10, mode=SearchMode(mode)
                )
            found = [documents[str(hit.document_id)] for hit in hits]
            rank = found.index(question["answer"]) + 1 if question["answer"] in found else None
            ranks[question["answer"][:2]].append(rank)
        results[mode] = {
            lang: {
                "recall@5": sum(1 for r in rs if r is not None and r <= 5) / len(rs),
                "mrr": sum(1 / r for r in rs if r is not None) / len(rs),
                "n": len(rs),
            }
            for lang, rs in ranks.items()
        }
    return results


def _vocabulary(rng: random.Random) -> tuple[list[str], list[str], list[float], list[float]]:
    """20,000 made-up English words and 3,000 Han characters, each drawn with Zipf weights
    (1/rank), as words are in real text: a few terms are in many chunks, most in few."""
    syllables = [a + b for a in "bdfgklmnprstvz" for b in "aeiou"]
    words = sorted({"".join(rng.choice(syllables) for _ in range(rng.randint(2, 4)))
                    for _ in range(30_000)})[:20_000]  # fmt: skip
    rng.shuffle(words)
    han = [chr(0x4E00 + i) for i in rng.sample(range(0x5000), 3000)]
    return words, han, [1 / r for r in range(1, len(words) + 1)], [1 / r for r in range(1, 3001)]


_VOCABULARY: tuple[list[str], list[str], list[float], list[float]] | None = None


def _synthetic(rng: random.Random, n: int, *, lo: int = 40, hi: int = 120) -> list[str]:
    """n passages, alternately English-like and Chinese-like, lo..hi terms each."""
    global _VOCABULARY
    if _VOCABULARY is None:
        _VOCABULARY = _vocabulary(random.Random(3))
    words, han, word_weights, han_weights = _VOCABULARY
    texts = []
    for i in range(n):
        size = rng.randint(lo, hi)
        if i % 2:
            texts.append(" ".join(rng.choices(words, word_weights, k=size)) + ".")
        else:
            texts.append("".join(rng.choices(han, han_weights, k=size)) + "。")
    return texts


async def throughput(resources: Any, documents: int = 20, paragraphs: int = 60) -> dict[str, float]:
    rng = random.Random(7)
    owner = await _user(resources)
    bodies = ["\n\n".join(_synthetic(rng, paragraphs)) for _ in range(documents)]
    STEPS.update(embedding_s=0.0, chunks=0)
    started = time.perf_counter()
    for number, body in enumerate(bodies):
        await _ingest(resources, owner, f"synthetic {number}", body)
    elapsed = time.perf_counter() - started
    chunks, embedding = int(STEPS["chunks"]), STEPS["embedding_s"]
    return {
        "documents": documents,
        "chunks": chunks,
        "seconds": elapsed,
        "chunks_per_s": chunks / elapsed,
        "embed_share": embedding / elapsed,
    }


async def _bulk_chunks(
    resources: Any, owner: uuid.UUID, total: int, per_document: int = 1000
) -> None:
    """`total` chunks with offline-embedded vectors, inserted in bulk (the ingestion path
    would take the better part of an hour here; the index is what is measured)."""
    from steward.knowledge import lexical
    from steward.knowledge.embedders import OfflineEmbedder
    from steward.knowledge.models import Document
    from steward.knowledge.service import vector_literal

    embedder = OfflineEmbedder()
    rng = random.Random(11)
    space = embedder.space
    for start in range(0, total, per_document):
        texts = _synthetic(rng, min(per_document, total - start))
        vectors = await embedder.embed(texts)
        async with resources.transaction() as session:
            document = Document(
                owner_id=owner,
                title=f"bulk {start}",
                media_type="text/plain",
                content_hash=uuid.uuid4().hex,
                byte_size=0,
                status="ready",
                chunk_count=len(texts),
                embedding_space=space,
                dimensions=256,
            )
            session.add(document)
            await session.flush()
            ids = [str(uuid.uuid4()) for _ in texts]
            await session.execute(
                text(
                    "INSERT INTO knowledge_chunks "
                    "(id, document_id, position, text, tokens, lexemes) "
                    "SELECT unnest(CAST(:ids AS uuid[])), :d, "
                    "generate_subscripts(CAST(:ids AS uuid[]), 1), "
                    "unnest(CAST(:texts AS text[])), 0, "
                    "to_tsvector('simple', unnest(CAST(:terms AS text[])))"
                ),
                {
                    "ids": ids,
                    "d": document.id,
                    "texts": texts,
                    "terms": [lexical.document(t) for t in texts],
                },
            )
            await session.execute(
                text(
                    "INSERT INTO knowledge_embeddings (chunk_id, space, dimensions, embedding) "
                    "SELECT unnest(CAST(:ids AS uuid[])), :space, 256, "
                    "unnest(CAST(CAST(:vectors AS text[]) AS vector[]))"
                ),
                {"ids": ids, "space": space, "vectors": [vector_literal(v) for v in vectors]},
            )


async def latency(resources: Any, chunks: int, queries: int = 200) -> dict[str, Any]:
    from steward.knowledge import service
    from steward.knowledge.schemas import SearchMode

    owner = await _user(resources)
    started = time.perf_counter()
    await _bulk_chunks(resources, owner, chunks)
    loaded_s = time.perf_counter() - started
    async with resources.transaction() as session:
        await session.execute(text("ANALYZE knowledge_chunks"))
        await session.execute(text("ANALYZE knowledge_embeddings"))
    rng = random.Random(5)
    questions = _synthetic(rng, queries, lo=6, hi=12)  # question-sized
    knowledge = resources.get(service.Knowledge)
    out: dict[str, Any] = {"chunks": chunks, "load_s": loaded_s, "queries": queries}
    tops: dict[str, list[list[uuid.UUID]]] = {}
    for label, mode, exact in (
        ("hnsw", SearchMode.VECTOR, False),
        ("exact", SearchMode.VECTOR, True),
        ("lexical", SearchMode.LEXICAL, False),
        ("hybrid", SearchMode.HYBRID, False),
    ):
        samples = []
        tops[label] = []
        for question in questions:
            began = time.perf_counter()
            async with resources.transaction() as session:
                hits, _ = await service.search(
                    session, knowledge, owner_id=owner, q=question, k=5, mode=mode, exact=exact
                )
            samples.append(time.perf_counter() - began)
            tops[label].append([hit.chunk_id for hit in hits])
        out[label] = {
            "p50_ms": statistics.median(samples) * 1000,
            "p99_ms": _pct(samples, 0.99) * 1000,
        }
    overlap = [
        len(set(a) & set(b)) / max(1, len(b))
        for a, b in zip(tops["hnsw"], tops["exact"], strict=True)
    ]
    out["hnsw_recall_at_5"] = sum(overlap) / len(overlap)
    async with resources.transaction() as session:
        plan = await session.execute(
            text("EXPLAIN " + service._vector_sql(256)),
            {
                "q": service.vector_literal([0.0] * 255 + [1.0]),
                "space": knowledge.embedder.space,
                "owner": owner,
                "k": 5,
            },
        )
        out["plan_uses_index"] = any("ix_knowledge_embeddings_256" in row[0] for row in plan)
    return out


async def run(database_url: str, redis_url: str, chunks: int) -> dict[str, Any]:
    from tests.conftest import make_settings
    from tests.engines import EngineSet

    from steward.platform.resources import Resources

    settings = make_settings(EngineSet(database_url, redis_url, "bench"))
    resources = Resources.open(settings)
    try:
        return {
            "quality": await quality(resources),
            "throughput": await throughput(resources),
            "latency": await latency(resources, chunks),
        }
    finally:
        await resources.close()


def markdown(results: dict[str, Any]) -> list[str]:
    lines = [
        "### Retrieval quality (labelled set, bench/data/knowledge_labelled.json)",
        "",
        "| mode | en recall@5 | en MRR | zh recall@5 | zh MRR |",
        "|---|---|---|---|---|",
    ]
    for mode, per_lang in results["quality"].items():
        en, zh = per_lang["en"], per_lang["zh"]
        lines.append(
            f"| {mode} | {en['recall@5']:.2f} | {en['mrr']:.2f} | {zh['recall@5']:.2f} "
            f"| {zh['mrr']:.2f} |"
        )
    n = results["quality"]["vector"]["en"]["n"]
    lines += [
        "",
        f"{n} English and {results['quality']['vector']['zh']['n']} Chinese questions, "
        "32 one-chunk documents, offline embedder (WordLlama 256).",
        "",
    ]
    t = results["throughput"]
    lines += [
        "### Ingestion throughput (offline embedder, one process)",
        "",
        f"{t['documents']} documents, {t['chunks']} chunks in {t['seconds']:.1f} s: "
        f"**{t['chunks_per_s']:.0f} chunks/s**; embedding was {t['embed_share']:.0%} of "
        "the time (the rest: extraction, chunking, tsvector, inserts, status events).",
        "",
    ]
    lat = results["latency"]
    ratio50 = lat["exact"]["p50_ms"] / lat["hnsw"]["p50_ms"]
    ratio99 = lat["exact"]["p99_ms"] / lat["hnsw"]["p99_ms"]
    lines += [
        f"### Search latency at {lat['chunks']:,} chunks "
        f"({lat['queries']} queries each, one at a time)",
        "",
        "| search | p50 ms | p99 ms |",
        "|---|---|---|",
    ]
    for label in ("hnsw", "exact", "lexical", "hybrid"):
        lines.append(f"| {label} | {lat[label]['p50_ms']:.1f} | {lat[label]['p99_ms']:.1f} |")
    lines += [
        "",
        f"Exact scan / HNSW: {ratio50:.1f}x at p50, {ratio99:.1f}x at p99. HNSW finds "
        f"{lat['hnsw_recall_at_5']:.0%} of the exact top 5 (ef_search 100, iterative scan). "
        f"The planner uses the HNSW index: {lat['plan_uses_index']}. "
        f"Times include embedding the question (offline, ~0.1 ms) and a transaction each. "
        f"Loading the chunks took {lat['load_s']:.0f} s (bulk insert, index maintained on insert).",
    ]
    return lines
