"""Join tokens: HS256-signed JWTs that admit one identity to one room with a set of grants.

A token is the only thing that lets someone into a room, so verification is deliberately
narrow and strict:

* Only HS256 is accepted. PyJWT is always called with ``algorithms=["HS256"]``, so ``none``,
  other HMAC sizes and public-key algorithms (whose "key confusion" attacks rely on a
  server accepting the algorithm the token names) are refused before any key is used.
  The MAC comparison is constant-time (``hmac.compare_digest`` inside PyJWT).
* Tokens longer than :data:`MAX_TOKEN_BYTES` or not in strict compact form (three
  unpadded base64url segments, canonical signature encoding) are refused before anything
  is decoded, so an attacker cannot make the server parse large or ambiguous input.
* Time checks use the ``now`` the caller passes (testable, and one clock for the whole
  server), a small leeway for clock skew, and a maximum lifetime so a leaked token is not
  useful for long.
* Claim types are checked exactly: a token that was signed with the right key but carries
  a claim of the wrong shape is refused as ``"bad claims"`` rather than half-trusted.

Token payload (all times are integer Unix seconds)::

    {"room": "standup", "sub": "user-42", "name": "Ada", "grants": ["publish", "subscribe"],
     "iat": 1700000000, "nbf": 1700000000, "exp": 1700003600}

``sub`` is the participant's stable identity, ``name`` an optional display name, ``nbf``
optional. Other registered claims (``jti``, ``iss``...) are ignored.

Nothing here logs, and :class:`TokenError` carries only a fixed reason string: tokens,
identities and names must never reach logs (see DESIGN.md, "Trust and privacy").
"""

from __future__ import annotations

import math
import re
import secrets
from typing import Any, Final, Literal, get_args

import jwt

from sfu.config import MIN_JWT_SECRET_BYTES, AuthConfig, Config
from sfu.room.identity import (
    GRANT_NAMES,
    MAX_IDENTITY_CHARS,
    MAX_NAME_CHARS,
    MAX_ROOM_CHARS,
    Grant,
    JoinClaims,
    grant_names,
)

__all__ = [
    "ALGORITHM",
    "BEARER_CHALLENGE",
    "MAX_TOKEN_BYTES",
    "MIN_SECRET_BYTES",
    "TOKEN_ERROR_REASONS",
    "TokenError",
    "TokenErrorReason",
    "bearer_token",
    "generate_secret",
    "issue_token",
    "signing_secret",
    "verify_token",
    "verify_with_config",
]

#: Sent with every 401 for a missing or refused bearer token (RFC 6750 §3).
BEARER_CHALLENGE: Final = {"WWW-Authenticate": 'Bearer realm="sfu"'}
#: The only accepted JWS algorithm.
ALGORITHM: Final = "HS256"
#: Longer tokens are refused before decoding (a normal join token is well under 1 KiB).
MAX_TOKEN_BYTES: Final = 4096
#: RFC 7518 section 3.2: an HS256 key must be at least as long as the hash output.
MIN_SECRET_BYTES: Final = MIN_JWT_SECRET_BYTES

TokenErrorReason = Literal[
    "missing",
    "malformed",
    "bad signature",
    "expired",
    "not yet valid",
    "wrong room",
    "ttl too long",
    "bad claims",
]
#: Every reason a :class:`TokenError` can carry.
TOKEN_ERROR_REASONS: Final[tuple[TokenErrorReason, ...]] = get_args(TokenErrorReason)


class TokenError(Exception):
    """A join token was refused; ``reason`` is one of :data:`TOKEN_ERROR_REASONS`.

    The message is the reason alone, never the token or any claim from it, so the
    exception is safe to log and to return to the client.
    """

    def __init__(self, reason: TokenErrorReason) -> None:
        if reason not in TOKEN_ERROR_REASONS:
            raise ValueError(f"unknown token error reason {reason!r}")
        self.reason: TokenErrorReason = reason
        super().__init__(reason)


_SEGMENT: Final = r"[A-Za-z0-9_-]+"
#: Header and payload are non-empty; an empty signature (``alg: none``) is a bad signature.
_COMPACT_JWS: Final = re.compile(rf"{_SEGMENT}\.{_SEGMENT}\.[A-Za-z0-9_-]*", re.ASCII)
#: An HS256 MAC is 32 bytes: 43 base64url characters, the last carrying 2 zero bits.
_SIGNATURE_CHARS: Final = 43
_CANONICAL_LAST_SIGNATURE_CHAR: Final = frozenset("AEIMQUYcgkosw048")
_BEARER: Final = re.compile(r"Bearer +([A-Za-z0-9._~+/-]+=*) *", re.ASCII | re.IGNORECASE)
_ALLOWED_HEADER_KEYS: Final = frozenset({"alg", "typ", "kid"})

#: Our own PyJWT instance: only signature checking; time and claim checks are done here,
#: with the caller's clock, so no global PyJWT state or wall clock is involved.
_JWT: Final = jwt.PyJWT(
    options={
        "verify_signature": True,
        "verify_exp": False,
        "verify_nbf": False,
        "verify_iat": False,
        "verify_aud": False,
        "verify_iss": False,
        "verify_sub": False,
        "verify_jti": False,
        "require": [],
    }
)


def _key(secret: str | bytes) -> bytes:
    """The HMAC key as bytes; refuses keys too short for HS256 (a configuration bug)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(f"the token secret must be at least {MIN_SECRET_BYTES} bytes")
    return key


def generate_secret() -> str:
    """A fresh random secret (256 bits, URL-safe text) for a per-process development key."""
    return secrets.token_urlsafe(MIN_SECRET_BYTES)


def signing_secret(config: Config) -> str:
    """The key the server signs and verifies join tokens with, decided once at start.

    The configured ``auth.jwt_secret`` when set. When it is empty and HTTP listens on
    loopback only, a fresh random key for this process: tokens then work out of the box
    for local development (through ``auth.dev_tokens``) and die with the process. A
    validated config never reaches the final error; it guards hand-built configs.
    """
    if config.auth.jwt_secret:
        return config.auth.jwt_secret
    if config.http_is_loopback():
        return generate_secret()
    raise ValueError("auth.jwt_secret is not set and http.host is not a loopback address")


def _valid_label(value: object, max_chars: int) -> bool:
    """A non-empty printable string of at most ``max_chars`` characters."""
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_claims_shape(claims: JoinClaims) -> None:
    """Raise :class:`ValueError` if ``claims`` could not pass :func:`verify_token`."""
    if not _valid_label(claims.room, MAX_ROOM_CHARS):
        raise ValueError(f"room must be 1 to {MAX_ROOM_CHARS} printable characters")
    if not _valid_label(claims.identity, MAX_IDENTITY_CHARS):
        raise ValueError(f"identity must be 1 to {MAX_IDENTITY_CHARS} printable characters")
    if claims.name is not None and not _valid_label(claims.name, MAX_NAME_CHARS):
        raise ValueError(f"name must be 1 to {MAX_NAME_CHARS} printable characters")
    if not isinstance(claims.grants, Grant):
        raise ValueError("grants must be a Grant")
    times = [claims.exp, claims.iat] + ([] if claims.nbf is None else [claims.nbf])
    if not all(_is_int(t) for t in times):
        raise ValueError("exp, iat and nbf must be integer Unix seconds")
    if claims.exp <= claims.iat:
        raise ValueError("exp must be after iat")


def issue_token(secret: str | bytes, claims: JoinClaims) -> str:
    """Sign ``claims`` with ``secret`` (HS256) and return the compact JWT.

    Raises :class:`ValueError` for a secret shorter than :data:`MIN_SECRET_BYTES` or
    claims that :func:`verify_token` would refuse, so a bad token is never handed out.
    """
    key = _key(secret)
    _check_claims_shape(claims)
    payload: dict[str, Any] = {
        "room": claims.room,
        "sub": claims.identity,
        "grants": grant_names(claims.grants),
        "iat": claims.iat,
        "exp": claims.exp,
    }
    if claims.name is not None:
        payload["name"] = claims.name
    if claims.nbf is not None:
        payload["nbf"] = claims.nbf
    return jwt.encode(payload, key, algorithm=ALGORITHM, headers={"typ": "JWT"})


def bearer_token(authorization_header: str | None) -> str:
    """Extract the token from an ``Authorization: Bearer <token>`` header value.

    Raises ``TokenError("missing")`` for no header (or an empty one) and
    ``TokenError("malformed")`` for any other scheme or an invalid token syntax.
    """
    if authorization_header is None or not authorization_header.strip():
        raise TokenError("missing")
    if len(authorization_header) > MAX_TOKEN_BYTES + 64:
        raise TokenError("malformed")
    match = _BEARER.fullmatch(authorization_header.strip())
    if match is None:
        raise TokenError("malformed")
    return match.group(1)


def _decode(key: bytes, token: str) -> dict[str, Any]:
    """Check the compact form and the HS256 signature; return the payload object."""
    if len(token) > MAX_TOKEN_BYTES or _COMPACT_JWS.fullmatch(token) is None:
        raise TokenError("malformed")
    signature = token.rsplit(".", 1)[1]
    # base64url leaves spare bits in the last character; insist they are zero so that one
    # signature has exactly one spelling (PyJWT before 2.10 did not check this).
    if len(signature) != _SIGNATURE_CHARS or signature[-1] not in _CANONICAL_LAST_SIGNATURE_CHAR:
        raise TokenError("bad signature")
    try:
        decoded = _JWT.decode_complete(token, key, algorithms=[ALGORITHM])
    except (jwt.InvalidSignatureError, jwt.InvalidAlgorithmError):
        raise TokenError("bad signature") from None
    except jwt.InvalidTokenError:  # DecodeError and structural header problems
        raise TokenError("malformed") from None
    header = decoded["header"]
    if not isinstance(header, dict) or not set(header) <= _ALLOWED_HEADER_KEYS:
        raise TokenError("malformed")  # e.g. "crit", "b64": extensions we do not implement
    payload = decoded["payload"]
    if not isinstance(payload, dict):
        raise TokenError("malformed")
    return payload


def _claims_from_payload(payload: dict[str, Any]) -> JoinClaims:
    """Type-check the payload strictly; any deviation is ``TokenError("bad claims")``."""
    room = payload.get("room")
    identity = payload.get("sub")
    name = payload.get("name")
    raw_grants = payload.get("grants")
    exp, iat, nbf = payload.get("exp"), payload.get("iat"), payload.get("nbf")
    ok = (
        _valid_label(room, MAX_ROOM_CHARS)
        and _valid_label(identity, MAX_IDENTITY_CHARS)
        and (name is None or _valid_label(name, MAX_NAME_CHARS))
        and isinstance(raw_grants, list)
        and all(isinstance(g, str) and g in GRANT_NAMES for g in raw_grants)
        and len(set(raw_grants)) == len(raw_grants)
        and _is_int(exp)
        and _is_int(iat)
        and (nbf is None or _is_int(nbf))
    )
    if not ok:
        raise TokenError("bad claims")
    grants = Grant.NONE
    for g in payload["grants"]:
        grants |= GRANT_NAMES[g]
    return JoinClaims(
        room=payload["room"],
        identity=payload["sub"],
        name=name,
        grants=grants,
        exp=payload["exp"],
        nbf=nbf,
        iat=payload["iat"],
    )


def verify_token(
    secret: str | bytes,
    token: str,
    *,
    now: float,
    room: str | None,
    leeway: float,
    max_ttl: float,
) -> JoinClaims:
    """Verify a join token and return its claims, or raise :class:`TokenError`.

    ``now`` is the current Unix time; ``room`` (when not ``None``) is the room being
    joined and must equal the token's ``room``; ``leeway`` is the tolerated clock skew in
    seconds; ``max_ttl`` the longest accepted lifetime, measured both as ``exp - iat`` and
    as ``exp - now`` (the latter plus ``leeway``, for an issuer whose clock runs ahead).

    Check order: size and syntax (``malformed``), signature (``bad signature``), claim
    types (``bad claims``), lifetime (``ttl too long``), ``iat``/``nbf`` in the future
    (``not yet valid``), expiry (``expired``: ``now - leeway >= exp``), room (``wrong room``).
    """
    if not isinstance(token, str) or not token:
        raise TokenError("missing")
    if not (math.isfinite(now) and math.isfinite(leeway) and leeway >= 0 and max_ttl > 0):
        raise ValueError("now, leeway and max_ttl must be finite; leeway >= 0, max_ttl > 0")
    key = _key(secret)
    claims = _claims_from_payload(_decode(key, token))
    if claims.exp <= claims.iat:
        raise TokenError("bad claims")
    if claims.exp - claims.iat > max_ttl or claims.exp - now > max_ttl + leeway:
        raise TokenError("ttl too long")
    not_before = claims.iat if claims.nbf is None else max(claims.iat, claims.nbf)
    if not_before > now + leeway:
        raise TokenError("not yet valid")
    if now - leeway >= claims.exp:
        raise TokenError("expired")
    if room is not None and claims.room != room:
        raise TokenError("wrong room")
    return claims


def verify_with_config(
    secret: str | bytes, token: str, auth: AuthConfig, *, room: str | None, now: float
) -> JoinClaims:
    """:func:`verify_token` with the leeway and lifetime bound of the ``[auth]`` config."""
    return verify_token(
        secret, token, now=now, room=room, leeway=auth.token_leeway_s, max_ttl=auth.max_token_ttl_s
    )
