"""Access-token codec: verified claims are remembered, expiry is checked on every use."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest

from steward.platform import security


def test_remembered_token_still_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = security.TokenCodec(
        key="k" * 40, issuer="steward", audience="steward-api", lifetime=timedelta(minutes=5)
    )
    token, _ = codec.issue(
        subject=uuid.uuid4(), session_id=uuid.uuid4(), scopes=frozenset({"todos:read"}), role="user"
    )
    assert codec.decode(token).scopes == {"todos:read"}
    assert codec.decode(token) is codec.decode(token)  # remembered, not re-verified
    later = time.time() + 6 * 60
    monkeypatch.setattr(security.time, "time", lambda: later)
    with pytest.raises(security.InvalidToken):
        codec.decode(token)


def test_other_key_never_hits_the_memory() -> None:
    issuer = security.TokenCodec(
        key="a" * 40, issuer="steward", audience="steward-api", lifetime=timedelta(minutes=5)
    )
    checker = security.TokenCodec(
        key="b" * 40, issuer="steward", audience="steward-api", lifetime=timedelta(minutes=5)
    )
    token, _ = issuer.issue(
        subject=uuid.uuid4(), session_id=uuid.uuid4(), scopes=frozenset(), role="user"
    )
    issuer.decode(token)
    with pytest.raises(security.InvalidToken):
        checker.decode(token)
