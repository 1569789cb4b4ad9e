"""Executing a run: the model/tool loop, its events, and how it ends (always in a final state).

`execute` is the loop as an async generator of events. `start` runs it in its own task that
writes every event to the run's stream and hands it to the live reader; the task, not the
reader, owns the run, so a reader that goes away cancels it explicitly and the run still
records "cancelled". Cancels asked for from another process arrive through a flag in Redis.

Over 400 lines for now: issue 21 splits the assistant package (the run lifecycle into one module,
the routers by resource); until then this module stays whole so that the split moves its code
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from steward.assistant import prompts, service, tokens, tools
from steward.assistant.models import Run, RunStatus
from steward.assistant.providers import (
    ChatRequest,
    Finish,
    Provider,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from steward.assistant.resilience import Providers
from steward.assistant.streams import EntryIds, RunEvent, RunLog
from steward.assistant.usage import UsageMeter
from steward.platform.errors import PROBLEM_BASE, Conflict
from steward.platform.resources import Resources
from steward.platform.transactions import after_commit

log = structlog.get_logger(__name__)

RUNS = Counter("steward_assistant_runs_total", "Runs by provider and final status.",
               ["provider", "status"])  # fmt: skip
ACTIVE = Gauge("steward_assistant_runs_active", "Runs executing in this process.")
RUN_SECONDS = Histogram(
    "steward_assistant_run_seconds", "Run duration by provider.", ["provider"],
    buckets=(0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300),
)  # fmt: skip
TOKENS = Counter("steward_assistant_tokens_total", "Tokens used by provider and kind.",
                 ["provider", "kind"])  # fmt: skip
CANCEL_POLL_S = 0.5


class Stalled(ProviderUnavailable):
    kind = "stream_stalled"


def _problem(exc: ProviderError | TimeoutError | Exception) -> dict[str, Any]:
    if isinstance(exc, ProviderError):
        status = 503 if isinstance(exc, ProviderUnavailable) else 502
        slug, detail = exc.kind.replace("_", "-"), str(exc)
    elif isinstance(exc, TimeoutError):
        status, slug, detail = 504, "run-timeout", "the run took longer than allowed"
    else:
        status, slug, detail = 500, "internal-error", "the run failed unexpectedly"
    return {
        "type": PROBLEM_BASE + slug,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }


@dataclass(slots=True)
class _Round:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)

    def add_call(self, delta: ToolCallDelta) -> None:
        call = self.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        if delta.id:
            call["id"] = delta.id
        if delta.name:
            call["name"] = delta.name
        call["arguments"] += delta.arguments


def _add(a: Usage, b: Usage) -> Usage:
    return Usage(
        prompt_tokens=a.prompt_tokens + b.prompt_tokens,
        completion_tokens=a.completion_tokens + b.completion_tokens,
        total_tokens=a.total_tokens + b.total_tokens,
    )


class Execution:
    """One run's loop. Keeps what it needs to close the run whatever happens."""

    def __init__(
        self,
        resources: Resources,
        plan: service.Plan,
        preloaded: service.Preloaded | None = None,
        committed: asyncio.Future[bool] | None = None,
    ) -> None:
        self.resources = resources
        self.plan = plan
        self.preloaded = preloaded
        # Set when the request that stored the run has committed (True) or failed (False);
        # None when the run was committed before it started (background runs).
        self.committed = committed
        # The answer's last message is stored with the run's end, in one transaction.
        self.final_text: str | None = None
        self.usage = Usage(0, 0, 0)
        self.first_token_at: datetime | None = None
        self.status: RunStatus | None = None
        # While a reply streams: when it counts as stalled unless a chunk arrives (loop
        # time). Checked by the run's watcher, not by a timer per chunk (see drive).
        self.idle_deadline: float | None = None
        self.stalled = False

    async def events(self) -> AsyncIterator[RunEvent]:
        plan = self.plan
        provider = self.resources.get(Providers).get(plan.provider)
        yield RunEvent("run", {
            "run_id": str(plan.run_id), "conversation_id": str(plan.conversation_id),
            "provider": plan.provider, "model": plan.model, "offline": plan.provider == "offline",
        })  # fmt: skip
        if self.preloaded is not None:
            prompt, history = self.preloaded.prompt, self.preloaded.history
        else:
            streamed = await self._streamed()
            async with self.resources.transaction() as session:
                claim = await service.claim_run(session, run_id=plan.run_id, streamed=streamed)
                if claim in ("ended", "lost"):
                    run = await session.get(Run, plan.run_id)
                    self.status = RunStatus(run.status) if run is not None else RunStatus.FAILED
                    if run is not None and run.error:
                        yield RunEvent("error", run.error)
                    yield RunEvent("done", {"run_id": str(plan.run_id),
                                            "status": self.status.value})  # fmt: skip
                    return
                if claim == "retry":
                    log.info("assistant.run_retried", run_id=str(plan.run_id))
                prompt = await prompts.active(session, name=plan.prompt_name)
                history = await service.history(session, conversation_id=plan.conversation_id)
        error: dict[str, Any] | None = None
        try:
            if provider is None:
                raise ProviderRejected(f"provider {plan.provider!r} is no longer configured",
                                       provider=plan.provider)  # fmt: skip
            async with asyncio.timeout(provider.config.total_timeout_s):
                async for event in self._rounds(provider, prompt, history):
                    yield event
            self.status = RunStatus.SUCCEEDED
        except (ProviderError, TimeoutError) as exc:
            error = _problem(exc)
            log.warning("assistant.run_failed", run_id=str(plan.run_id), provider=plan.provider,
                        error=type(exc).__name__, detail=str(exc))  # fmt: skip
        except Exception as exc:
            log.exception("assistant.run_crashed", run_id=str(plan.run_id))
            error = _problem(exc)
        if error is not None:
            self.status = RunStatus.FAILED
            yield RunEvent("error", error)
        yield RunEvent("usage", {
            "prompt_tokens": self.usage.prompt_tokens,
            "completion_tokens": self.usage.completion_tokens,
            "total_tokens": self.usage.total_tokens,
        })  # fmt: skip
        assert self.status is not None
        status = await asyncio.shield(self.close(self.status, error))
        yield RunEvent("done", {"run_id": str(plan.run_id), "status": status.value})

    async def _streamed(self) -> bool | None:
        """Whether an earlier attempt already sent output for this run."""
        try:
            events = await run_log(self.resources).read(self.plan.run_id)
        except Exception:  # noqa: BLE001 - unknown; the claim then assumes the worst
            return None
        return any(event.event in ("token", "tool_call") for event in events)

    async def _rounds(
        self, provider: Provider, prompt: prompts.ActivePrompt, history: list[dict[str, Any]]
    ) -> AsyncIterator[RunEvent]:
        plan = self.plan
        settings = self.resources.settings
        system = {"role": "system", "content": prompt.render(user_name=plan.user_name)}
        available = tools.available(plan.scopes)
        schemas = [tool.schema() for tool in available]
        max_rounds = settings.assistant_max_tool_rounds
        for round_no in range(max_rounds + 1):
            # The last round offers no tools: the model has to answer in words.
            offered = schemas if round_no < max_rounds else []
            budget = service.input_budget(provider) - tokens.count_tools(offered, plan.model)
            messages, _ = tokens.fit(system, history, budget=budget, model=plan.model)
            request = ChatRequest(model=plan.model, messages=messages, tools=offered,
                                  max_tokens=provider.config.max_output_tokens)  # fmt: skip
            opened = await self.resources.get(Providers).open(provider, request)
            current = _Round()
            chunks = aiter(opened.chunks())
            loop = asyncio.get_running_loop()
            idle = opened.provider.config.idle_timeout_s
            while True:
                self.idle_deadline = loop.time() + idle
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                except asyncio.CancelledError:
                    task = asyncio.current_task()
                    # Only the watcher's own cancel becomes the error; any other stands.
                    if not self.stalled or task is None or task.uncancel() > 0:
                        raise
                    raise Stalled(f"{opened.provider.name} stopped sending mid-reply",
                                  provider=opened.provider.name) from None  # fmt: skip
                finally:
                    self.idle_deadline = None
                if isinstance(chunk, TextDelta):
                    self._first_token()
                    current.text.append(chunk.text)
                    yield RunEvent("token", {"delta": chunk.text})
                elif isinstance(chunk, ToolCallDelta):
                    self._first_token()
                    current.add_call(chunk)
                elif isinstance(chunk, Usage):
                    self.usage = _add(self.usage, chunk)
                elif isinstance(chunk, Finish) and chunk.reason == "length":
                    log.info("assistant.reply_truncated", run_id=str(plan.run_id))
            text = "".join(current.text)
            if not current.calls:
                self.final_text = text
                return
            calls: list[dict[str, Any]] = [
                {"id": call["id"] or f"call_{uuid.uuid4().hex[:12]}", "type": "function",
                 "function": {"name": call["name"], "arguments": call["arguments"]}}
                for _, call in sorted(current.calls.items())
            ]  # fmt: skip
            assistant = {"role": "assistant", "content": text, "tool_calls": calls}
            results: list[dict[str, Any]] = []
            for call in calls:
                function = call["function"]
                yield RunEvent("tool_call", {"id": call["id"], "name": function["name"],
                                             "arguments": function["arguments"]})  # fmt: skip
                result, ok = await tools.call(
                    function["name"], function["arguments"], caller=plan.caller(),
                    resources=self.resources,
                )  # fmt: skip
                key = "result" if ok else "error"
                payload = result if ok else result.get("error")
                yield RunEvent("tool_result", {"id": call["id"], "name": function["name"],
                                               key: payload})  # fmt: skip
                results.append({
                    "role": "tool", "tool_call_id": call["id"], "name": function["name"],
                    "content": tools.encode(result),
                })  # fmt: skip
            if not await self.stored():  # its request failed to store it (see drive)
                raise asyncio.CancelledError
            async with self.resources.transaction() as session:
                await service.add_message(session, plan=plan, role="assistant", content=text,
                                          tool_calls=calls)  # fmt: skip
                for message in results:
                    await service.add_message(
                        session, plan=plan, role="tool", content=message["content"],
                        tool_call_id=message["tool_call_id"], name=message["name"],
                    )  # fmt: skip
            history = [*history, assistant, *results]

    def _first_token(self) -> None:
        if self.first_token_at is None:
            self.first_token_at = datetime.now(UTC)

    async def stored(self) -> bool:
        """Whether the run's rows exist: writes about the run wait for its request's commit
        (the provider call does not; it starts while the request commits)."""
        return True if self.committed is None else await asyncio.shield(self.committed)

    async def close(self, status: RunStatus, error: dict[str, Any] | None) -> RunStatus:
        """Record the end of the run; a cancel that got there first wins."""
        if not await self.stored():
            return status  # its request failed to store it: nothing to record
        won = False
        try:
            async with self.resources.transaction() as session:
                if status is RunStatus.SUCCEEDED and self.final_text is not None:
                    await service.add_message(session, plan=self.plan, role="assistant",
                                              content=self.final_text)  # fmt: skip
                won = await service.finish_run(
                    session, run_id=self.plan.run_id, status=status, usage=self.usage,
                    first_token_at=self.first_token_at, error=error,
                )  # fmt: skip
                if not won:
                    run = await session.get(Run, self.plan.run_id)
                    status = RunStatus(run.status) if run is not None else status
        except Exception:
            log.exception("assistant.run_not_recorded", run_id=str(self.plan.run_id))
        if won:
            # Apart from the run's transaction: an accounting failure must not leave the run
            # "running". Batched with other runs ending now (see usage.UsageMeter).
            try:
                await self.resources.get(UsageMeter).record(
                    user_id=self.plan.user_id, api_key_id=self.plan.api_key_id, usage=self.usage
                )
            except Exception:  # the run is recorded; the log must say its tokens were not
                log.exception("assistant.usage_not_recorded", run_id=str(self.plan.run_id))
        RUNS.labels(self.plan.provider, status.value).inc()
        TOKENS.labels(self.plan.provider, "prompt").inc(self.usage.prompt_tokens)
        TOKENS.labels(self.plan.provider, "completion").inc(self.usage.completion_tokens)
        return status


class ActiveRuns:
    """The runs executing in this process, so they can be cancelled and drained."""

    def __init__(self) -> None:
        self._tasks: dict[uuid.UUID, asyncio.Task[RunStatus | None]] = {}

    def start(
        self,
        resources: Resources,
        plan: service.Plan,
        preloaded: service.Preloaded,
        committed: asyncio.Future[bool] | None = None,
    ) -> LiveRun:
        """Execute a fresh run in its own task; its events go to the LiveRun and the stream.
        With `committed`, the run may start before its rows are committed (see drive)."""
        queue: asyncio.Queue[tuple[str | None, RunEvent] | None] = asyncio.Queue()
        task = asyncio.create_task(
            drive(resources, plan, queue, preloaded=preloaded, committed=committed),
            name=f"run-{plan.run_id}",
        )
        self._tasks[plan.run_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(plan.run_id, None))
        return LiveRun(run_id=plan.run_id, task=task, queue=queue)

    def cancel(self, run_id: uuid.UUID) -> bool:
        task = self._tasks.get(run_id)
        if task is None:
            return False
        task.cancel()
        return True

    async def cancel_all(self, timeout_s: float = 5.0) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)


@dataclass(slots=True)
class LiveRun:
    """A started run: read its events with `events()`, stop it with `cancel()`."""

    run_id: uuid.UUID
    task: asyncio.Task[RunStatus | None]
    queue: asyncio.Queue[tuple[str | None, RunEvent] | None]

    async def events(self) -> AsyncIterator[tuple[str | None, RunEvent]]:
        """(stream entry id, event) until the run ends. Leaving early cancels the run."""
        async for batch in self.batches(1):
            for item in batch:
                yield item

    async def batches(self, size: int) -> AsyncIterator[list[tuple[str | None, RunEvent]]]:
        """The same, in lists of what is already waiting (at most `size`)."""
        try:
            while (item := await self.queue.get()) is not None:
                batch = [item]
                while len(batch) < size and not self.queue.empty():
                    following = self.queue.get_nowait()
                    if following is None:
                        yield batch
                        return
                    batch.append(following)
                yield batch
        finally:
            if not self.task.done():
                self.task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(self.task)

    def cancel(self) -> None:
        self.task.cancel()


async def cancel(
    resources: Resources, active: ActiveRuns, session: AsyncSession, *, run: Run
) -> None:
    """Stop `run` wherever it executes: here directly, elsewhere through the Redis flag its
    process polls. A run still queued for a worker is closed here (the worker then finds
    it ended)."""
    if RunStatus(run.status).finished:
        raise Conflict(f"the run has already ended ({run.status})")
    log.info("assistant.run_cancel_requested", run_id=str(run.id))
    if active.cancel(run.id):
        return
    stream = run_log(resources)
    await stream.request_cancel(run.id)
    if run.status != RunStatus.QUEUED.value:
        return
    await service.finish_run(session, run_id=run.id, status=RunStatus.CANCELLED,
                             usage=Usage(0, 0, 0))  # fmt: skip
    done = RunEvent("done", {"run_id": str(run.id), "status": RunStatus.CANCELLED.value})

    async def announce() -> None:
        await stream.append(run.id, done)

    after_commit(session).call(announce)


def run_log(resources: Resources) -> RunLog:
    return resources.get(RunLog)


async def drive(
    resources: Resources,
    plan: service.Plan,
    deliver: asyncio.Queue[tuple[str | None, RunEvent] | None] | None = None,
    *,
    preloaded: service.Preloaded | None = None,
    committed: asyncio.Future[bool] | None = None,
) -> RunStatus | None:
    """Execute `plan` to the end: every event to the run's stream (and to `deliver`), while
    watching for a cancel asked from anywhere. Returns the final status.

    With `committed`, the provider call starts while the request that stored the run is
    still committing: the wait for the first token hides the commit's round trips. Writes
    about the run wait for it, and if it fails the run stops without being recorded."""
    stream = run_log(resources)
    execution = Execution(resources, plan, preloaded, committed)
    current = asyncio.current_task()
    ACTIVE.inc()
    started = time.perf_counter()

    async def watch() -> None:
        if not await execution.stored() and current is not None:
            current.cancel()
            return
        assert current is not None
        asked = asyncio.ensure_future(stream.cancel_asked(plan.run_id))
        asked.add_done_callback(lambda done: None if done.cancelled() else current.cancel())
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(CANCEL_POLL_S)
                # A stalled reply: a timer per streamed chunk (asyncio.timeout) cost more
                # than this check; the stall is noticed up to CANCEL_POLL_S late.
                deadline = execution.idle_deadline
                if deadline is not None and loop.time() > deadline:
                    execution.stalled = True
                    current.cancel()
                    return
        finally:
            asked.cancel()

    # A run started here for a live reader is fresh, and nothing else appends to its stream
    # while it lasts (cancels of queued runs and retries concern background runs): its ids
    # are assigned here, and each event reaches the reader at once, its XADD off that path
    # (the process's writer sends every run's pending events in one round trip).
    ids = EntryIds() if deliver is not None else None

    def emit(event: RunEvent) -> None:
        if ids is None:
            stream.enqueue(plan.run_id, event)
            return
        entry_id = ids.next()
        assert deliver is not None
        deliver.put_nowait((entry_id, event))
        stream.enqueue(plan.run_id, event, entry_id)

    watcher = asyncio.create_task(watch())
    ended = False
    try:
        async for event in execution.events():
            emit(event)
        ended = True
        await stream.flush()
    except asyncio.CancelledError:
        if not ended:
            # Cancelled at any point (even before it started): recorded, every reader told.
            await asyncio.shield(execution.close(RunStatus.CANCELLED, None))
            emit(RunEvent("done", {"run_id": str(plan.run_id), "status": "cancelled"}))
        with contextlib.suppress(Exception):
            await asyncio.shield(stream.flush())
        raise
    finally:
        watcher.cancel()
        ACTIVE.dec()
        RUN_SECONDS.labels(plan.provider).observe(time.perf_counter() - started)
        if deliver is not None:
            # Unbounded: a run's events are bounded by its token budget, and a slow reader
            # must not stall the provider call (which has its own idle timeout).
            deliver.put_nowait(None)
    return execution.status
