"""API key tokens: how they are made, parsed and checked.

A token is ``cango_sk_<public_id>_<secret>``: the prefix makes leaked keys easy to
recognise (secret scanners, logs), ``public_id`` (12 lowercase base32 characters)
finds the row with one indexed lookup, and ``secret`` is 32 random bytes in
URL-safe base64 (43 characters). The stored hash covers the whole token.
"""

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

TOKEN_PREFIX = "cango_sk_"  # noqa: S105 - a public prefix, not a secret
PUBLIC_ID_LENGTH = 12
SECRET_BYTES = 32
_TOKEN_RE = re.compile(r"^cango_sk_([a-z2-7]{12})_([A-Za-z0-9_-]{43})$")


@dataclass(frozen=True, slots=True)
class ParsedToken:
    public_id: str
    token: str


def token_generate() -> tuple[str, str]:
    """Return a new ``(public_id, token)`` pair."""
    public_id = base64.b32encode(secrets.token_bytes(10)).decode().lower()[:PUBLIC_ID_LENGTH]
    secret = secrets.token_urlsafe(SECRET_BYTES)
    return public_id, f"{TOKEN_PREFIX}{public_id}_{secret}"


def token_parse(raw: str) -> ParsedToken | None:
    """Return the parts of a well-formed token, or ``None`` for anything else."""
    match = _TOKEN_RE.match(raw)
    if match is None:
        return None
    return ParsedToken(public_id=match.group(1), token=raw)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def token_matches(token: str, stored_hash: str) -> bool:
    """Compare in constant time so the hash is not leaked byte by byte."""
    return hmac.compare_digest(token_hash(token), stored_hash)
