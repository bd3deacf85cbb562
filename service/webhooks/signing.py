"""Webhook secrets: made, sealed at rest, used to sign and to verify (Standard Webhooks, SPEC 8).

- A secret is ``whsec_`` + base64 of ``SECRET_BYTES`` random bytes (the spec allows 24-64).
- At rest it is sealed with AES-256-GCM under a key derived from
  ``FINTEGRATE_WEBHOOK_ENCRYPTION_KEY`` (SHA-256 of the setting): a database dump alone
  cannot sign. The endpoint id is the associated data, so a sealed secret copied onto
  another endpoint does not open.
- ``webhook-signature`` is ``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``
  with the secret's decoded bytes; several secrets (a rotation's grace) give several
  signatures, space-separated. ``verify`` is the receiver's side: a tenant's worker imports
  it (``service.messaging.consume.verify_webhook``) with the standard library alone, so
  ``cryptography`` is imported only where secrets are sealed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Sequence

SECRET_PREFIX = "whsec_"  # noqa: S105 - the format's prefix, not a secret
SECRET_BYTES = 32
NONCE_BYTES = 12
# Development only (documented): with no key configured in development, secrets are sealed
# under this public value, so a development dump can be decrypted by anyone.
DEVELOPMENT_KEY = "fintegrate-development-webhook-key"
# Standard Webhooks: a delivery signed longer ago (or later) than this is refused (replays).
TOLERANCE_SECONDS = 300


class SecretsUnavailable(RuntimeError):
    """No encryption key is configured (outside development) or a sealed secret won't open."""


class InvalidSignature(ValueError):
    """A delivery whose signature or timestamp does not check out: refuse it."""


def new_secret() -> str:
    """A fresh ``whsec_…`` secret."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def secret_bytes(secret: str) -> bytes:
    """The HMAC key of ``secret``: its base64 part decoded."""
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secret_keys: Sequence[bytes], message_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value: one ``v1,<b64>`` per key, space-separated."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    return " ".join(
        "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
        for key in secret_keys
    )


def verify(
    secret: str,
    message_id: str,
    timestamp: str,
    body: bytes,
    signatures: str,
    now: float | None = None,
) -> None:
    """InvalidSignature unless one of ``signatures`` (the header, space-separated) is
    ``secret``'s over the message and ``timestamp`` is within ``TOLERANCE_SECONDS`` of now."""
    try:
        signed_at = int(timestamp)
    except ValueError as exc:
        raise InvalidSignature("webhook-timestamp is not unix seconds") from exc
    if abs((time.time() if now is None else now) - signed_at) > TOLERANCE_SECONDS:
        raise InvalidSignature("webhook-timestamp is too far from now (a replay?)")
    expected = sign([secret_bytes(secret)], message_id, signed_at, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures.split()):
        raise InvalidSignature("no webhook-signature matches the secret")


class SecretBox:
    """Seals and opens secrets with the configured key (AES-256-GCM)."""

    def __init__(self, key_setting: str | None, environment: str):
        if not key_setting:
            if environment != "development":
                raise SecretsUnavailable(
                    "webhooks need FINTEGRATE_WEBHOOK_ENCRYPTION_KEY (a long random string) "
                    "outside development; see docs/webhooks.md"
                )
            key_setting = DEVELOPMENT_KEY
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(hashlib.sha256(key_setting.encode()).digest())

    def seal(self, secret: str, endpoint_id: str) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, secret.encode(), endpoint_id.encode())

    def open(self, sealed: bytes, endpoint_id: str) -> str:
        from cryptography.exceptions import InvalidTag

        nonce, ciphertext = sealed[:NONCE_BYTES], sealed[NONCE_BYTES:]
        try:
            return self._aead.decrypt(nonce, ciphertext, endpoint_id.encode()).decode()
        except InvalidTag as exc:
            raise SecretsUnavailable(
                "a webhook secret does not open with FINTEGRATE_WEBHOOK_ENCRYPTION_KEY "
                "(was the key changed? rotate the endpoint's secret)"
            ) from exc
