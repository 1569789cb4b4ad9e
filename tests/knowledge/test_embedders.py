"""The offline embedder works with no network at all, and it is semantic: in Chinese and in
English, each question's nearest passage is the one that answers it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.engines import ROOT

PAIRS = [
    ("怎么重置密码？", "在设置页面点击“忘记密码”，按邮件里的链接设置新密码。"),
    (
        "How do I reset my password?",
        "Open settings, choose 'forgot password' and follow the link we email you.",
    ),
    ("明天的天气怎么样？", "天气预报显示明天多云，下午有小雨。"),
    (
        "What is the refund policy?",
        "Refunds are available within 30 days of purchase with a receipt.",
    ),
    ("公司几点下班？", "公司的工作时间是早上九点到下午六点。"),
    ("Which database does Steward use?", "Steward stores its data in PostgreSQL with pgvector."),
]

# In a process of its own: sockets refuse to connect before anything is imported, so a
# download attempt (or any other network use) fails the test instead of passing unnoticed.
_OFFLINE = textwrap.dedent("""
    import asyncio, json, socket, sys

    def refuse(*args, **kwargs):
        raise OSError("the network is unreachable in this test")

    socket.socket.connect = refuse
    socket.create_connection = refuse

    from steward.knowledge.embedders import OfflineEmbedder

    async def main():
        pairs = json.loads(sys.stdin.read())
        embedder = OfflineEmbedder()
        questions = await embedder.embed([q for q, _ in pairs])
        passages = await embedder.embed([p for _, p in pairs])
        ranks = []
        for question in questions:
            scores = [sum(a * b for a, b in zip(question, p)) for p in passages]
            ranks.append(max(range(len(scores)), key=scores.__getitem__))
        norms = [sum(x * x for x in v) ** 0.5 for v in passages]
        print(json.dumps({"ranks": ranks, "dims": len(passages[0]), "norms": norms}))

    asyncio.run(main())
""")


def test_offline_embedder_needs_no_network_and_ranks_the_answering_passage_first() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE], input=json.dumps(PAIRS), capture_output=True,
        text=True, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["dims"] == 256
    assert all(abs(norm - 1.0) < 1e-3 for norm in result["norms"])
    assert result["ranks"] == list(range(len(PAIRS)))


def test_errors_that_tasks_raise_cross_processes_intact() -> None:
    """A pool process pickles a failed task's exception to its parent; one that cannot be
    rebuilt there kills the worker (keyword-only arguments are not in `args`)."""
    import pickle

    from steward.assistant.provider_errors import FirstTokenTimeout, ProviderRejected
    from steward.knowledge.embedders import EmbeddingError

    for error in (
        EmbeddingError("refused (400)", transient=False),
        ProviderRejected("bad request", provider="fake", status=400),
        FirstTokenTimeout("slow", provider="fake", retry_after=2.0),
    ):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
