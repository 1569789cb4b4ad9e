"""A run's work: the model/tool loop, its events, and how it ends (always in a final state).

`Execution.events()` is the loop as an async generator of events; `runs.py` drives it (in its
own task, with a watcher for cancels and stalls) and owns the rest of the run's life.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import Counter

from steward.assistant import prompts, repository, structured, tokens, tools
from steward.assistant.models import Run, RunStatus
from steward.assistant.plan import Plan, Preloaded, input_budget
from steward.assistant.provider_errors import (
    CircuitOpen,
    FirstTokenTimeout,
    ProviderError,
    ProviderRejected,
    ProviderUnavailable,
)
from steward.assistant.providers import (
    ChatRequest,
    Finish,
    Provider,
    ReasoningDelta,
    TextDelta,
    ToolCallDelta,
    Usage,
)
from steward.assistant.resilience import Providers
from steward.assistant.streams import RunEvent, RunLog
from steward.assistant.usage import UsageMeter, cost, count_cost, usage_json
from steward.platform import tracing
from steward.platform.errors import PROBLEM_BASE
from steward.platform.resources import Resources
from steward.settings_providers import ModelInfo, Prices

log = structlog.get_logger(__name__)

RUNS = Counter("steward_assistant_runs_total", "Runs by provider and final status.",
               ["provider", "status"])  # fmt: skip
TOKENS = Counter("steward_assistant_tokens_total", "Tokens used by provider and kind.",
                 ["provider", "kind"])  # fmt: skip


_CITE = re.compile(r"\[(\d{1,3})\]")


class Stalled(ProviderUnavailable):
    kind = "stream_stalled"


class InvalidOutput(ProviderError):
    """The answer did not match the run's JSON Schema, even after its repair round."""

    kind = "invalid_output"


def _problem(exc: ProviderError | TimeoutError | Exception) -> dict[str, Any]:
    """How a run failed, as a problem whose status is what a gateway would answer: 504 when
    the provider was too slow (no first token, a stall, the run's time limit), 503 when the
    circuit breaker kept it from being called, 502 for anything else it did (refused the
    connection, failed DNS or TLS, answered an error or nonsense); 500 is our own bug."""
    cause: str | None = None
    if isinstance(exc, ProviderError):
        cause = exc.cause
        if isinstance(exc, FirstTokenTimeout | Stalled) or cause == "timeout":
            status = 504
        elif isinstance(exc, CircuitOpen):
            status = 503
        else:
            status = 502
        slug, detail = exc.kind.replace("_", "-"), str(exc)
    elif isinstance(exc, TimeoutError):
        status, slug, detail = 504, "run-timeout", "the run took longer than allowed"
    else:
        status, slug, detail = 500, "internal-error", "the run failed unexpectedly"
    problem: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if cause is not None:
        problem["cause"] = cause
    if isinstance(exc, ProviderError) and exc.code is not None:
        problem["provider_code"] = exc.code
    return problem


@dataclass(slots=True)
class _Round:
    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    reasoning: list[str] = field(default_factory=list)
    # For a round whose usage never came (cancelled, cut, or a provider that sends none):
    # what it is counted as instead (see Execution.close).
    prompt_tokens: int = 0
    prices: Prices | None = None
    reported: bool = False

    def add_call(self, delta: ToolCallDelta) -> None:
        call = self.calls.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
        if delta.id:
            call["id"] = delta.id
        if delta.name:
            call["name"] = delta.name
        call["arguments"] += delta.arguments


class Execution:
    """One run's loop. Keeps what it needs to close the run whatever happens."""

    def __init__(
        self,
        resources: Resources,
        plan: Plan,
        preloaded: Preloaded | None = None,
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
        self.cost: Decimal | None = None  # None: no prices for the models that answered
        self.first_token_at: datetime | None = None
        self.status: RunStatus | None = None
        # While a reply streams: when it counts as stalled unless a chunk arrives (loop
        # time). Checked by the run's watcher, not by a timer per chunk (see drive).
        self.idle_deadline: float | None = None
        self.stalled = False
        # Sources that tools returned, numbered across the run as the model cites them.
        self.sources: dict[int, dict[str, Any]] = {}
        self.citations: list[dict[str, Any]] = []
        self.reasoning: list[str] = []  # stored with the run, apart from the answer
        self.current: _Round | None = None  # the provider call in progress, once answering

    def _number_sources(self, result: dict[str, Any]) -> None:
        """Give a tool result's `sources` the run's next numbers (the model cites [n])."""
        for source in result.get("sources") or ():
            source["index"] = len(self.sources) + 1
            self.sources[source["index"]] = source

    def _cited(self) -> list[dict[str, Any]]:
        """The sources the final answer cites, in the order it first cites them."""
        cited: list[dict[str, Any]] = []
        for number in dict.fromkeys(int(n) for n in _CITE.findall(self.final_text or "")):
            source = self.sources.get(number)
            if source is not None:
                cited.append({"index": number, "document_id": source["document_id"],
                              "chunk_id": source["chunk_id"], "title": source["title"],
                              "snippet": source["text"][: tools.SNIPPET_CHARS]})  # fmt: skip
        return cited

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
                claim = await repository.claim_run(session, run_id=plan.run_id, streamed=streamed)
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
                history = await repository.history(session, conversation_id=plan.conversation_id)
        error: dict[str, Any] | None = None
        try:
            if provider is None:
                raise ProviderRejected(f"provider {plan.provider!r} is no longer configured",
                                       provider=plan.provider)  # fmt: skip
            async with asyncio.timeout(provider.config.total_timeout_s):
                async for event in self._rounds(provider, prompt, history):
                    yield event
            self.status = RunStatus.SUCCEEDED
            self.citations = self._cited()
            for citation in self.citations:
                yield RunEvent("citation", citation)
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
        self._count_unreported()
        yield RunEvent("usage", usage_json(self.usage, self.cost, self.resources.settings.currency))
        assert self.status is not None
        status = await asyncio.shield(self.close(self.status, error))
        yield RunEvent("done", {"run_id": str(plan.run_id), "status": status.value})

    async def _streamed(self) -> bool | None:
        """Whether an earlier attempt already sent output for this run."""
        try:
            events = await self.resources.get(RunLog).read(self.plan.run_id)
        except Exception:  # noqa: BLE001 - unknown; the claim then assumes the worst
            return None
        return any(event.event in ("token", "reasoning", "tool_call") for event in events)

    async def _rounds(
        self, provider: Provider, prompt: prompts.ActivePrompt, history: list[dict[str, Any]]
    ) -> AsyncIterator[RunEvent]:
        plan = self.plan
        settings = self.resources.settings
        system = {"role": "system", "content": prompt.render(user_name=plan.user_name)}
        available = tools.available(plan.scopes)
        # A model configured without tools is offered none (and so answers in one round).
        spec = provider.config.spec(provider.name, plan.model)
        schemas = [tool.schema() for tool in available] if spec.tools else []
        max_rounds = settings.assistant_max_tool_rounds if spec.tools else 0
        options, system = self._options(spec, system)
        round_no, repaired = 0, False
        while True:
            # The last round offers no tools: the model has to answer in words.
            offered = schemas if round_no < max_rounds else []
            tool_tokens = tokens.count_tools(offered, plan.model)
            budget = input_budget(provider, plan.model) - tool_tokens
            messages, prompt_tokens = tokens.fit(system, history, budget=budget, model=plan.model)
            request = ChatRequest(model=plan.model, messages=messages, tools=offered,
                                  max_tokens=provider.config.limits(plan.model)[1],
                                  options=options)  # fmt: skip
            current = _Round()
            with tracing.ProviderCall(provider.name, plan.model) as traced:
                opened = await self.resources.get(Providers).open(provider, request)
                traced.answered_by(opened.provider.name)
                current.prompt_tokens = prompt_tokens + tool_tokens
                current.prices = opened.provider.config.prices_for(opened.model)
                self.current = current
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
                        traced.first_token()
                        current.text.append(chunk.text)
                        yield RunEvent("token", {"delta": chunk.text})
                    elif isinstance(chunk, ReasoningDelta):
                        # Shown as it comes, kept out of the answer and of every later call
                        # (thinking models' providers refuse it back in the history).
                        self._first_token()
                        traced.first_token()
                        self.reasoning.append(chunk.text)
                        current.reasoning.append(chunk.text)
                        yield RunEvent("reasoning", {"delta": chunk.text})
                    elif isinstance(chunk, ToolCallDelta):
                        self._first_token()
                        traced.first_token()
                        current.add_call(chunk)
                    elif isinstance(chunk, Usage):
                        current.reported = True
                        self._count(chunk, current.prices)  # of whoever answered
                        traced.usage(chunk.prompt_tokens, chunk.completion_tokens)
                    elif isinstance(chunk, Finish) and chunk.reason == "length":
                        log.info("assistant.reply_truncated", run_id=str(plan.run_id))
            text = "".join(current.text)
            if not current.calls:
                found = self._problems(text)
                if not found:
                    self.final_text = text
                    return
                if repaired:
                    raise InvalidOutput(
                        f"the answer does not match the requested schema: {'; '.join(found)}",
                        provider=opened.provider.name, cause="schema",
                    )  # fmt: skip
                # One repair round: the model sees its answer and what is wrong with it; the
                # client is told to drop the text streamed so far.
                repaired, round_no = True, max_rounds
                yield RunEvent("repair", {"problems": found})
                history = [*history, {"role": "assistant", "content": text},
                           structured.repair_request(found)]  # fmt: skip
                continue
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
                if ok:
                    self._number_sources(result)
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
                await repository.add_message(session, plan=plan, role="assistant", content=text,
                                          tool_calls=calls)  # fmt: skip
                for message in results:
                    await repository.add_message(
                        session, plan=plan, role="tool", content=message["content"],
                        tool_call_id=message["tool_call_id"], name=message["name"],
                    )  # fmt: skip
            history = [*history, assistant, *results]
            round_no += 1
            if round_no > max_rounds:
                return

    def _options(
        self, spec: ModelInfo, system: dict[str, Any]
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """The request's extra body fields, and its system message, for this run's vendor
        parameters and response format (as the model takes a schema: see structured)."""
        options: dict[str, Any] = dict(self.plan.extra_body or {})
        wanted = self.plan.response_format
        if wanted is None:
            return options, system
        mode = spec.structured_output
        if mode == "json_schema":
            options["response_format"] = wanted
            return options, system
        if mode == "json_object":
            options["response_format"] = {"type": "json_object"}
        schema = wanted["json_schema"]
        asked = structured.instruction(schema["name"], schema["schema"])
        return options, {**system, "content": f"{system['content']}\n\n{asked['content']}"}

    def _problems(self, text: str) -> list[str]:
        wanted = self.plan.response_format
        return [] if wanted is None else structured.problems(text, wanted["json_schema"]["schema"])

    def _count(self, usage: Usage, prices: Prices | None) -> None:
        self.usage += usage
        spent = cost(usage, prices)
        if spent is not None:
            self.cost = spent if self.cost is None else self.cost + spent

    def _count_unreported(self) -> None:
        """Count the call in progress if its provider never reported its usage (the run was
        cancelled or cut before the usage chunk, or the provider sends none): its prompt as
        counted before the call, and what it streamed. Otherwise a client could leave just
        before the end of every answer and never spend its quota."""
        current, self.current = self.current, None
        if current is None or current.reported:
            return
        model = self.plan.model
        streamed = "".join([*current.reasoning, *current.text,
                            *(call["arguments"] for call in current.calls.values())])  # fmt: skip
        completion = tokens.count_text(streamed, model) if streamed else 0
        prompt = current.prompt_tokens
        self._count(Usage(prompt, completion, prompt + completion), current.prices)

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
        self._count_unreported()
        won = False
        try:
            answer = self.final_text if status is RunStatus.SUCCEEDED else None
            async with self.resources.transaction() as session:
                won = await repository.finish_run(
                    session, run_id=self.plan.run_id, status=status, usage=self.usage,
                    cost=self.cost, currency=self.resources.settings.currency,
                    first_token_at=self.first_token_at, error=error, citations=self.citations,
                    answer=answer, reasoning="".join(self.reasoning) or None,
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
                    user_id=self.plan.user_id, api_key_id=self.plan.api_key_id,
                    usage=self.usage, cost=self.cost,
                )  # fmt: skip
            except Exception:  # the run is recorded; the log must say its tokens were not
                log.exception("assistant.usage_not_recorded", run_id=str(self.plan.run_id))
        RUNS.labels(self.plan.provider, status.value).inc()
        TOKENS.labels(self.plan.provider, "prompt").inc(self.usage.prompt_tokens)
        TOKENS.labels(self.plan.provider, "completion").inc(self.usage.completion_tokens)
        count_cost(self.plan.provider, self.cost, self.resources.settings.currency)
        return status
