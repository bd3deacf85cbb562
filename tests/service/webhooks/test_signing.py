"""Secrets and signatures (Standard Webhooks) against the reference library, and sealing."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from service.webhooks.signing import (
    InvalidSignature,
    SecretBox,
    SecretsUnavailable,
    new_secret,
    secret_bytes,
    sign,
    verify,
)


def test_secrets_have_the_standard_form() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    assert 24 <= len(base64.b64decode(secret[6:])) <= 64
    assert new_secret() != secret


def test_our_signature_is_the_reference_librarys() -> None:
    secret, body, timestamp = new_secret(), b'{"a":1}', 1765108800
    reference = Webhook(secret).sign("evt_1", datetime.fromtimestamp(timestamp, UTC), body)
    assert sign([secret_bytes(secret)], "evt_1", timestamp, body) == reference


def test_two_secrets_give_two_space_separated_signatures() -> None:
    old, new = new_secret(), new_secret()
    header = sign([secret_bytes(new), secret_bytes(old)], "evt", 1, b"x")
    assert [part[:3] for part in header.split(" ")] == ["v1,", "v1,"]


def test_sealed_secrets_open_only_with_the_key_and_on_their_endpoint() -> None:
    box = SecretBox("a-long-random-key", "production")
    sealed = box.seal("whsec_abc", "endpoint-1")
    assert b"whsec_abc" not in sealed
    assert box.open(sealed, "endpoint-1") == "whsec_abc"
    with pytest.raises(SecretsUnavailable):
        box.open(sealed, "endpoint-2")
    with pytest.raises(SecretsUnavailable):
        SecretBox("another-key", "production").open(sealed, "endpoint-1")


def test_no_key_is_refused_outside_development() -> None:
    with pytest.raises(SecretsUnavailable, match="FINTEGRATE_WEBHOOK_ENCRYPTION_KEY"):
        SecretBox(None, "production")
    assert (
        SecretBox(None, "development").open(SecretBox(None, "development").seal("s", "e"), "e")
        == "s"
    )


def test_what_the_reference_library_signs_verifies_here_and_a_change_does_not() -> None:
    secret, body, timestamp = new_secret(), b'{"a":1}', 1765108800
    header = Webhook(secret).sign("evt_1", datetime.fromtimestamp(timestamp, UTC), body)
    verify(secret, "evt_1", str(timestamp), body, header, now=timestamp + 60)
    with pytest.raises(InvalidSignature):
        verify(secret, "evt_2", str(timestamp), body, header, now=timestamp)
    with pytest.raises(InvalidSignature):
        verify(secret, "evt_1", str(timestamp), body, header, now=timestamp + 3600)
