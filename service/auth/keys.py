"""API keys: ``fk_<prefix>_<secret>`` generation, strict parsing and bcrypt hashing.

The prefix (12 lowercase letters and digits) is the clear lookup id; bcrypt hashes the
whole key. ``bcrypt_calls()`` counts every hash and check so tests can prove the warm
path does none.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import string
import threading
from dataclasses import dataclass
from functools import cached_property

import bcrypt

PREFIX_LENGTH = 12
SECRET_BYTES = 32
PREFIX_ALPHABET = string.ascii_lowercase + string.digits
# bcrypt reads at most 72 bytes: "fk_" + 12 + "_" + at most 56 secret characters.
KEY_PATTERN = re.compile(r"^fk_([a-z0-9]{12})_([A-Za-z0-9_-]{32,56})$")

_bcrypt_calls = 0
_bcrypt_lock = threading.Lock()


@dataclass(frozen=True)
class ParsedKey:
    """A key that has the right shape; says nothing about validity."""

    prefix: str
    full: str

    @cached_property
    def fingerprint(self) -> str:
        """sha256 of the whole key: a cache key that never holds the secret itself."""
        return hashlib.sha256(self.full.encode()).hexdigest()


def generate_key() -> ParsedKey:
    """A fresh random key."""
    prefix = "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH))
    return ParsedKey(prefix=prefix, full=f"fk_{prefix}_{secrets.token_urlsafe(SECRET_BYTES)}")


def parse_key(raw: str | None) -> ParsedKey | None:
    """The key if ``raw`` has the exact ``fk_<prefix>_<secret>`` shape, else None."""
    if raw is None:
        return None
    match = KEY_PATTERN.fullmatch(raw)
    return ParsedKey(prefix=match.group(1), full=raw) if match else None


def hash_key(key: ParsedKey, rounds: int) -> str:
    """The bcrypt hash of the whole key at ``rounds`` (FINTEGRATE_BCRYPT_ROUNDS)."""
    _count_bcrypt()
    return bcrypt.hashpw(key.full.encode(), bcrypt.gensalt(rounds)).decode()


def check_key(key: ParsedKey, key_hash: str) -> bool:
    """True when ``key`` matches the stored bcrypt hash."""
    _count_bcrypt()
    try:
        return bcrypt.checkpw(key.full.encode(), key_hash.encode())
    except ValueError:
        return False


def bcrypt_calls() -> int:
    """How many bcrypt hashes and checks this process has run."""
    return _bcrypt_calls


def _count_bcrypt() -> None:
    global _bcrypt_calls
    with _bcrypt_lock:
        _bcrypt_calls += 1
