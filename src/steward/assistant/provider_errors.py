"""What a provider's failures become: one error tree, named by cause, whatever the SDK or
its HTTP client raised, and the providers' own error codes read (rate limits, spent
accounts, moderation).

    ProviderError            the provider could not produce (the rest of) a reply
    ├── ProviderUnavailable  transient: 429, 5xx, timeouts, connection errors; retryable
    │   └── FirstTokenTimeout  no chunk arrived within the first-token timeout
    ├── ProviderRejected     the provider refused this request (4xx other than 429)
    └── CircuitOpen          too many recent failures; not called at all
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import Mapping
from typing import Any

import openai


class ProviderError(Exception):
    """`cause` names what went wrong, for clients and operators alike: `connection_refused`,
    `dns`, `tls`, `timeout`, `connection` (other transport failures), `status` (the provider
    answered an error), `quota` (it refused because the account's balance or quota is
    spent: retrying cannot help), `content_filter` (its moderation refused the text),
    `reply` (it answered something unreadable), or None. `code` is the provider's own error
    code when it sent one (`Throttling.RateQuota`, `insufficient_quota`, ...)."""

    kind = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        status: int | None = None,
        retry_after: float | None = None,
        cause: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.provider = provider
        self.status = status
        self.retry_after = retry_after
        self.cause = cause
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        # Picklable with its keyword-only arguments (see knowledge.embedders.EmbeddingError).
        rebuild = functools.partial(type(self), str(self), provider=self.provider,
                                    status=self.status, retry_after=self.retry_after,
                                    cause=self.cause, code=self.code)  # fmt: skip
        return rebuild, ()


class ProviderUnavailable(ProviderError):
    kind = "provider_unavailable"


class FirstTokenTimeout(ProviderUnavailable):
    kind = "first_token_timeout"


class ProviderRejected(ProviderError):
    kind = "provider_rejected"


class CircuitOpen(ProviderError):
    kind = "circuit_open"


def _retry_after(headers: Mapping[str, str] | None) -> float | None:
    if not headers:
        return None
    raw = headers.get("retry-after-ms")
    if raw is not None:
        try:
            return max(0.0, float(raw) / 1000)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        return None  # an HTTP date: rare from these APIs; the backoff applies instead


def translate(exc: Exception, provider: str, *, endpoint: str = "") -> ProviderError:
    """An SDK or transport exception as one of ours, named by its cause. `endpoint` (the
    provider's base URL) goes into the message so that an operator sees where it tried."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retry_after = _retry_after(exc.response.headers)
        code = _code(exc.code)
        message = f"{provider} answered HTTP {status}" + (f" ({code})" if code else "")
        cause = _vendor_cause(status, code)
        if cause == "status" and (status == 429 or status >= 500 or status == 408):
            return ProviderUnavailable(message, provider=provider, status=status,
                                       retry_after=retry_after, cause=cause, code=code)  # fmt: skip
        return ProviderRejected(message, provider=provider, status=status, cause=cause, code=code)
    transport = _transport_cause(exc)
    if transport is not None:
        cause, what = transport
        at = f" ({endpoint})" if endpoint else ""
        return ProviderUnavailable(f"{provider}{at}: {what}", provider=provider, cause=cause)
    # Malformed chunks and anything else the SDK raises mid-stream.
    return ProviderError(f"{provider} sent a reply that could not be read", provider=provider,
                         cause="reply")  # fmt: skip


# Provider error codes that mean the account cannot be served until someone pays or raises
# a limit: a 429 with one of these is not a rate limit, and retrying it only adds load.
# OpenAI and DeepSeek (`insufficient_quota`; DeepSeek also answers 402), DashScope
# (`Arrearage`, `AllocationQuota.FreeTierOnly`), Volcano Ark (`QuotaExceeded`,
# `AccountOverdueError`, `AccessDenied`).
_SPENT = frozenset({
    "insufficient_quota", "arrearage", "allocationquota.freetieronly", "quotaexceeded",
    "accountoverdueerror", "accessdenied", "billing_hard_limit_reached",
})  # fmt: skip
# Moderation refusals: DashScope's `DataInspectionFailed`, Ark's `*SensitiveContentDetected`,
# OpenAI's `content_policy_violation` / `content_filter`.
_FILTERED = ("datainspectionfailed", "sensitivecontentdetected", "content_policy", "content_filter")


def _code(raw: object) -> str | None:
    """The provider's error code, as shown to clients: a short printable token or nothing."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = str(raw)
    if not isinstance(raw, str) or not raw or len(raw) > 80 or not raw.isprintable():
        return None
    return raw


def _vendor_cause(status: int, code: str | None) -> str:
    lowered = (code or "").lower()
    if status == 402 or lowered in _SPENT:
        return "quota"
    if any(marker in lowered for marker in _FILTERED):
        return "content_filter"
    return "status"


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _transport_cause(exc: Exception) -> tuple[str, str] | None:
    """(cause, words) for a failure to reach the provider or to keep reading from it.

    The SDK reports every failure to connect through its aiohttp transport as a timeout
    (`APITimeoutError` over `ConnectTimeout`), a refused connection within milliseconds
    included; the real reason is further down the exception chain, so it is read there."""
    chain = _chain(exc)
    if not (
        isinstance(exc, openai.APIConnectionError | OSError | TimeoutError)
        or _is_transport_error(exc)
    ):
        return None
    for link in chain:
        if isinstance(link, ConnectionRefusedError):
            return "connection_refused", "connection refused"
        if isinstance(link, socket.gaierror):
            return "dns", f"DNS lookup failed ({link.strerror or link})"
        if isinstance(link, ssl.SSLCertVerificationError):
            # (aiohttp's own subclass carries none of ssl's attributes)
            why = getattr(link, "verify_message", None) or getattr(link, "reason", None) or link
            return "tls", f"TLS certificate rejected ({why})"
        if isinstance(link, ssl.SSLError):
            return "tls", f"TLS handshake failed ({getattr(link, 'reason', None) or link})"
    if any(isinstance(link, TimeoutError | openai.APITimeoutError) for link in chain):
        connecting = any("connect" in type(link).__name__.lower() for link in chain)
        return "timeout", "timed out connecting" if connecting else "timed out"
    reason = next((str(link) for link in reversed(chain) if str(link)), type(exc).__name__)
    return "connection", f"connection failed ({reason})"


def _is_transport_error(exc: Exception) -> bool:
    # Mid-stream, the SDK lets its HTTP client's own errors through unwrapped; that client
    # is an implementation detail of the SDK (httpx or its fork), so match by origin.
    module = type(exc).__module__
    return module.startswith(("httpx", "httpcore")) and not type(exc).__name__.startswith(
        "Decoding"
    )


def stream_error(provider: str, message: dict[str, Any]) -> ProviderError:
    """An error the provider sent in place of a chunk, after its 200."""
    error = message.get("error")
    detail = error.get("message") if isinstance(error, dict) else error
    code = _code(error.get("code")) if isinstance(error, dict) else None
    words = f": {str(detail)[:200]}" if detail else ""
    named = f" ({code})" if code else ""
    cause = "reply" if code is None else _vendor_cause(200, code).replace("status", "reply")
    return ProviderError(f"{provider} sent an error mid-reply{named}{words}", provider=provider,
                         cause=cause, code=code)  # fmt: skip
