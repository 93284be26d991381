"""Tests for join tokens (``sfu.signaling.auth``): issuing, strict verification, bearer parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import warnings
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfu.config import AuthConfig, Config, HttpConfig
from sfu.room.identity import Grant, JoinClaims, grant_names, parse_grants
from sfu.signaling.auth import (
    MAX_TOKEN_BYTES,
    TOKEN_ERROR_REASONS,
    TokenError,
    bearer_token,
    generate_secret,
    issue_token,
    signing_secret,
    verify_token,
)

SECRET = "test-secret-0123456789-abcdefghijklmnop"  # 39 bytes
OTHER_SECRET = "another-secret-0123456789-abcdefghijklm"
NOW = 1_700_000_000
LEEWAY = 5
MAX_TTL = 86400

CLAIMS = JoinClaims(
    room="standup",
    identity="user-42",
    name="Ada Lovelace",
    grants=Grant.PUBLISH | Grant.SUBSCRIBE,
    iat=NOW,
    nbf=NOW,
    exp=NOW + 3600,
)


def b64(data: bytes) -> str:
    """Unpadded base64url, as JWS compact serialisation uses."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def sign(payload: object, *, header: dict[str, Any] | None = None, key: str = SECRET) -> str:
    """Build an HS256 token by hand, so tests can sign payloads that issue_token refuses."""
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"} if header is None else header).encode())
    body = b64(json.dumps(payload).encode())
    mac = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(mac)}"


def payload(**changes: Any) -> dict[str, Any]:
    """A valid payload for CLAIMS, with ``changes`` applied (value ``...`` deletes the key)."""
    base: dict[str, Any] = {
        "room": "standup",
        "sub": "user-42",
        "name": "Ada Lovelace",
        "grants": ["publish", "subscribe"],
        "iat": NOW,
        "nbf": NOW,
        "exp": NOW + 3600,
    }
    for key, value in changes.items():
        if value is ...:
            base.pop(key, None)
        else:
            base[key] = value
    return base


def verify(
    token: str,
    *,
    now: float = NOW,
    room: str | None = "standup",
    secret: str = SECRET,
    leeway: float = LEEWAY,
    max_ttl: float = MAX_TTL,
) -> JoinClaims:
    return verify_token(secret, token, now=now, room=room, leeway=leeway, max_ttl=max_ttl)


def reason_of(token: str, **kwargs: Any) -> str:
    with pytest.raises(TokenError) as info:
        verify(token, **kwargs)
    return info.value.reason


# --- round trip and basics -------------------------------------------------------------


def test_round_trip_returns_the_issued_claims() -> None:
    token = issue_token(SECRET, CLAIMS)
    assert verify(token) == CLAIMS
    assert verify(token, room=None) == CLAIMS  # room check is optional


def test_round_trip_without_optional_claims_and_with_all_grants() -> None:
    claims = JoinClaims(room="r", identity="i", grants=Grant(15), iat=NOW, exp=NOW + 60)
    got = verify(issue_token(SECRET, claims), room="r")
    assert got == claims
    assert got.name is None and got.nbf is None
    assert got.grants == Grant.PUBLISH | Grant.SUBSCRIBE | Grant.ADMIN | Grant.HOST


def test_issued_token_is_plain_hs256_with_the_documented_payload() -> None:
    token = issue_token(SECRET, CLAIMS)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    decoded = jwt.decode(token, SECRET, algorithms=["HS256"], options={"verify_exp": False})
    assert decoded == payload()


def test_unknown_extra_claims_are_ignored() -> None:
    assert verify(sign(payload(jti="abc", iss="app"))) == CLAIMS


def test_claims_repr_leaves_out_personal_data() -> None:
    text = repr(CLAIMS)
    assert "standup" in text
    assert "user-42" not in text
    assert "Ada" not in text


def test_token_error_reasons_are_the_fixed_set() -> None:
    assert set(TOKEN_ERROR_REASONS) == {
        "missing",
        "malformed",
        "bad signature",
        "expired",
        "not yet valid",
        "wrong room",
        "ttl too long",
        "bad claims",
    }
    err = TokenError("expired")
    assert (err.reason, str(err)) == ("expired", "expired")
    with pytest.raises(ValueError):
        TokenError("nope")  # type: ignore[arg-type]


def test_error_message_never_contains_the_token() -> None:
    token = issue_token(SECRET, CLAIMS)
    with pytest.raises(TokenError) as info:
        verify(token, room="other")
    assert str(info.value) == "wrong room"
    assert token not in repr(info.value)


# --- each reason ------------------------------------------------------------------------


@pytest.mark.parametrize("token", ["", None])
def test_missing(token: Any) -> None:
    assert reason_of(token) == "missing"


@pytest.mark.parametrize(
    "token",
    [
        "abc",
        "a.b",
        "a.b.c.d",
        ".b.c",
        "a..c",
        "a b.c.d",
        "ä.b.c",
        "a.b.c=",
        "a.b.c\n",
        "e30.e30." + "A" * 43 + "%",
    ],
)
def test_malformed_syntax(token: str) -> None:
    assert reason_of(token) == "malformed"


def test_malformed_json_inside_valid_base64() -> None:
    good = issue_token(SECRET, CLAIMS)
    _, body, sig = good.split(".")
    assert reason_of(f"{b64(b'not json')}.{body}.{sig}") == "malformed"
    assert reason_of(f"{b64(b'[1, 2]')}.{body}.{sig}") == "malformed"


def test_signed_payload_that_is_not_an_object_is_malformed() -> None:
    assert reason_of(sign([1, 2, 3])) == "malformed"
    assert reason_of(sign("just a string")) == "malformed"


def test_wrong_secret_is_bad_signature() -> None:
    token = issue_token(OTHER_SECRET, CLAIMS)
    assert reason_of(token) == "bad signature"


def test_tampered_payload_is_bad_signature() -> None:
    head, _, sig = issue_token(SECRET, CLAIMS).split(".")
    forged = b64(json.dumps(payload(grants=["publish", "subscribe", "admin"])).encode())
    assert reason_of(f"{head}.{forged}.{sig}") == "bad signature"


def test_tampered_header_is_bad_signature() -> None:
    _, body, sig = issue_token(SECRET, CLAIMS).split(".")
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "x"}).encode())
    assert reason_of(f"{head}.{body}.{sig}") == "bad signature"


def test_alg_none_is_refused() -> None:
    for header in ({"alg": "none"}, {"alg": "None", "typ": "JWT"}, {"typ": "JWT"}):
        head = b64(json.dumps(header).encode())
        body = b64(json.dumps(payload()).encode())
        assert reason_of(f"{head}.{body}.") == "bad signature"
        # Even with a correct HS256 MAC over it, a header that does not say HS256 is refused.
        assert reason_of(sign(payload(), header=header)) == "bad signature"


def test_hs512_is_refused_even_with_the_right_secret() -> None:
    with warnings.catch_warnings():  # PyJWT warns that 39 bytes is short for HS512
        warnings.simplefilter("ignore")
        token = jwt.encode(payload(), SECRET, algorithm="HS512")
    assert jwt.get_unverified_header(token)["alg"] == "HS512"
    assert reason_of(token) == "bad signature"


def test_rs256_looking_token_is_refused() -> None:
    head = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(payload()).encode())
    assert reason_of(f"{head}.{body}.{b64(os.urandom(256))}") == "bad signature"
    # Key confusion: an "RS256" header over an HMAC made with the secret is still refused.
    assert reason_of(sign(payload(), header={"alg": "RS256", "typ": "JWT"})) == "bad signature"


def test_non_canonical_signature_encoding_is_refused() -> None:
    token = issue_token(SECRET, CLAIMS)
    last = token[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    # The same 4 data bits with non-zero spare bits decode to the same MAC bytes.
    twin = alphabet[alphabet.index(last) + 1]
    assert base64.urlsafe_b64decode(token[-43:] + "=") == base64.urlsafe_b64decode(
        token[-43:-1] + twin + "="
    )
    assert reason_of(token[:-1] + twin) == "bad signature"


def test_unknown_critical_header_is_malformed() -> None:
    token = sign(payload(), header={"alg": "HS256", "crit": ["exp"], "exp": 1})
    assert reason_of(token) == "malformed"


def test_expired() -> None:
    token = issue_token(SECRET, CLAIMS)
    assert reason_of(token, now=CLAIMS.exp + LEEWAY + 1) == "expired"


def test_not_yet_valid_by_nbf_and_by_iat() -> None:
    later = JoinClaims(room="standup", identity="u", iat=NOW, nbf=NOW + 600, exp=NOW + 3600)
    assert reason_of(issue_token(SECRET, later)) == "not yet valid"
    future_iat = JoinClaims(room="standup", identity="u", iat=NOW + 600, exp=NOW + 3600)
    assert reason_of(issue_token(SECRET, future_iat)) == "not yet valid"
    # Once the time comes, both are fine.
    assert verify(issue_token(SECRET, later), now=NOW + 600).nbf == NOW + 600


def test_wrong_room() -> None:
    token = issue_token(SECRET, CLAIMS)
    assert reason_of(token, room="standup2") == "wrong room"
    assert reason_of(token, room="Standup") == "wrong room"


def test_ttl_too_long_by_lifetime_and_by_remaining_time() -> None:
    long_lived = JoinClaims(room="standup", identity="u", iat=NOW, exp=NOW + MAX_TTL + 1)
    assert reason_of(issue_token(SECRET, long_lived)) == "ttl too long"
    # A short exp - iat with a backdated iat but an exp far in the future: exp - now counts.
    far = JoinClaims(room="standup", identity="u", iat=NOW + 2 * MAX_TTL, exp=NOW + 3 * MAX_TTL)
    assert reason_of(issue_token(SECRET, far)) == "ttl too long"


def test_ttl_boundaries() -> None:
    exact = JoinClaims(room="standup", identity="u", iat=NOW, exp=NOW + 600)
    token = issue_token(SECRET, exact)
    assert verify(token, max_ttl=600).exp == NOW + 600
    assert reason_of(token, max_ttl=599) == "ttl too long"
    # exp - now may exceed max_ttl by at most the leeway (issuer clock slightly ahead).
    ahead = JoinClaims(room="standup", identity="u", iat=NOW + 5, exp=NOW + 605)
    assert verify(issue_token(SECRET, ahead), max_ttl=600, leeway=5).iat == NOW + 5
    assert reason_of(issue_token(SECRET, ahead), max_ttl=600, leeway=4) == "ttl too long"


BAD_CLAIMS = [
    payload(room=...),
    payload(room=""),
    payload(room="x" * 129),
    payload(room="a\nb"),
    payload(room="tab\there"),
    payload(room=5),
    payload(room=["standup"]),
    payload(sub=...),
    payload(sub=""),
    payload(sub="x" * 129),
    payload(sub="\x00"),
    payload(sub=42),
    payload(name=""),
    payload(name="n" * 65),
    payload(name="bell\x07"),
    payload(name=7),
    payload(grants=...),
    payload(grants="publish"),
    payload(grants=["publish", "fly"]),
    payload(grants=["PUBLISH"]),
    payload(grants=["publish", "publish"]),
    payload(grants=[1]),
    payload(grants={"publish": True}),
    payload(exp=...),
    payload(exp=float(NOW + 3600)),
    payload(exp=str(NOW + 3600)),
    payload(exp=True),
    payload(iat=...),
    payload(iat=None),
    payload(iat=float(NOW)),
    payload(nbf="now"),
    payload(nbf=False),
    payload(exp=NOW, iat=NOW),
    payload(exp=NOW - 1, iat=NOW),
]


@pytest.mark.parametrize("body", BAD_CLAIMS)
def test_bad_claims(body: dict[str, Any]) -> None:
    assert reason_of(sign(body)) == "bad claims"


def test_claim_length_limits_are_inclusive() -> None:
    body = payload(room="r" * 128, sub="s" * 128, name="n" * 64)
    claims = verify(sign(body), room="r" * 128)
    assert (len(claims.room), len(claims.identity), len(claims.name or "")) == (128, 128, 64)
    # Printable non-ASCII text is fine (names are people's names).
    assert verify(sign(payload(name="Zoë 山田 🙂"))).name == "Zoë 山田 🙂"
    # Null name means no name; an empty grant list grants nothing.
    assert verify(sign(payload(name=None, grants=[]))).grants == Grant.NONE


# --- leeway edges -----------------------------------------------------------------------


def test_expiry_leeway_edges() -> None:
    token = issue_token(SECRET, CLAIMS)
    exp = CLAIMS.exp
    assert verify(token, now=exp - 1, leeway=0) == CLAIMS
    assert reason_of(token, now=exp, leeway=0) == "expired"
    assert verify(token, now=exp + LEEWAY - 0.001) == CLAIMS
    assert reason_of(token, now=exp + LEEWAY) == "expired"


def test_not_before_leeway_edges() -> None:
    claims = JoinClaims(room="standup", identity="u", iat=NOW, nbf=NOW + 100, exp=NOW + 3600)
    token = issue_token(SECRET, claims)
    assert verify(token, now=NOW + 100 - LEEWAY) == claims
    assert reason_of(token, now=NOW + 100 - LEEWAY - 0.001) == "not yet valid"
    assert reason_of(token, now=NOW + 99, leeway=0) == "not yet valid"
    assert verify(token, now=NOW + 100, leeway=0) == claims


def test_invalid_verification_parameters_are_programming_errors() -> None:
    token = issue_token(SECRET, CLAIMS)
    with pytest.raises(ValueError):
        verify(token, leeway=-1)
    with pytest.raises(ValueError):
        verify(token, max_ttl=0)
    with pytest.raises(ValueError):
        verify(token, now=float("nan"))


# --- size limit -------------------------------------------------------------------------


def test_oversized_token_is_refused_before_decoding() -> None:
    assert reason_of("A" * (MAX_TOKEN_BYTES + 1)) == "malformed"
    # A validly signed token just over the limit is refused, just under is accepted.
    tokens = [sign(payload(pad="x" * n)) for n in range(2700, 3100)]
    under = max((t for t in tokens if len(t) <= MAX_TOKEN_BYTES), key=len)
    over = min((t for t in tokens if len(t) > MAX_TOKEN_BYTES), key=len)
    assert len(under) >= MAX_TOKEN_BYTES - 3
    assert verify(under) == CLAIMS
    assert reason_of(over) == "malformed"


# --- bearer header ----------------------------------------------------------------------


def test_bearer_token_extracts_the_token() -> None:
    token = issue_token(SECRET, CLAIMS)
    assert bearer_token(f"Bearer {token}") == token
    assert bearer_token(f"bearer  {token} ") == token
    assert verify(bearer_token(f"BEARER {token}")) == CLAIMS


@pytest.mark.parametrize("header", [None, "", "   "])
def test_bearer_missing(header: str | None) -> None:
    with pytest.raises(TokenError) as info:
        bearer_token(header)
    assert info.value.reason == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "Bearer",
        "Bearer ",
        "Basic dXNlcjpwYXNz",
        "Token abc.def.ghi",
        "Bearer a b",
        "Bearer abc\tdef",
        "Bearerabc.def.ghi",
        "Bearer ä",
        "Bearer " + "A" * (MAX_TOKEN_BYTES + 100),
    ],
)
def test_bearer_malformed(header: str) -> None:
    with pytest.raises(TokenError) as info:
        bearer_token(header)
    assert info.value.reason == "malformed"


# --- fuzzing ----------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_fuzz_arbitrary_strings_only_raise_token_error(text: str) -> None:
    with pytest.raises(TokenError) as info:
        verify(text)
    assert info.value.reason in TOKEN_ERROR_REASONS


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.text(
            alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=",
            max_size=80,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_fuzz_jwt_shaped_strings_only_raise_token_error(parts: list[str]) -> None:
    with pytest.raises(TokenError) as info:
        verify(".".join(parts))
    assert info.value.reason in TOKEN_ERROR_REASONS


GOOD_TOKEN = issue_token(SECRET, CLAIMS)


@settings(max_examples=200, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(GOOD_TOKEN) - 1),
    st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.="),
)
def test_fuzz_any_single_character_change_is_refused(index: int, char: str) -> None:
    if GOOD_TOKEN[index] == char:
        assert verify(GOOD_TOKEN) == CLAIMS
        return
    mutated = GOOD_TOKEN[:index] + char + GOOD_TOKEN[index + 1 :]
    with pytest.raises(TokenError) as info:
        verify(mutated)
    assert info.value.reason in {"malformed", "bad signature"}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.from_type(type(None)) | st.integers() | st.text()))
def test_fuzz_signed_arbitrary_payloads_raise_token_error(body: dict[str, Any]) -> None:
    # Validly signed but arbitrary JSON objects: never anything but a TokenError.
    with pytest.raises(TokenError):
        verify(sign(body))


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["alg", "typ", "kid", "crit", "b64", "jku", "x5u", "zip"]) | st.text(),
        JSON_VALUES,
        max_size=4,
    )
)
def test_fuzz_signed_arbitrary_headers_only_raise_token_error(header: dict[str, Any]) -> None:
    # A correct HS256 MAC under a strange header: accepted only for a plain HS256 header.
    plain = header.get("alg") == "HS256" and set(header) <= {"alg", "typ", "kid"}
    try:
        claims = verify(sign(payload(), header=header))
    except TokenError as err:
        assert not plain or err.reason == "malformed"
    else:
        assert plain and claims == CLAIMS


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=200)))
def test_fuzz_bearer_header(header: str | None) -> None:
    try:
        token = bearer_token(header)
    except TokenError as err:
        assert err.reason in {"missing", "malformed"}
    else:
        assert header is not None and token and token in header


# --- issuing, grants, secrets -----------------------------------------------------------


def test_issue_token_refuses_short_secrets_and_bad_claims() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        issue_token("x" * 31, CLAIMS)
    with pytest.raises(ValueError, match="32 bytes"):
        verify(GOOD_TOKEN, secret="x" * 31)
    bad = [
        JoinClaims(room="", identity="u", iat=NOW, exp=NOW + 1),
        JoinClaims(room="r", identity="u\n", iat=NOW, exp=NOW + 1),
        JoinClaims(room="r", identity="u", name="n" * 65, iat=NOW, exp=NOW + 1),
        JoinClaims(room="r", identity="u", iat=NOW, exp=NOW),
        JoinClaims(room="r", identity="u", iat=NOW, exp=float(NOW + 5)),  # type: ignore[arg-type]
        JoinClaims(room="r", identity="u", grants=3, iat=NOW, exp=NOW + 5),  # type: ignore[arg-type]
    ]
    for claims in bad:
        with pytest.raises(ValueError):
            issue_token(SECRET, claims)


def test_issue_accepts_bytes_secret_compatible_with_text() -> None:
    token = issue_token(SECRET.encode(), CLAIMS)
    assert verify(token, secret=SECRET) == CLAIMS


def test_parse_grants_and_names() -> None:
    assert parse_grants("publish,subscribe") == Grant.PUBLISH | Grant.SUBSCRIBE
    assert parse_grants(" Host , admin,") == Grant.HOST | Grant.ADMIN
    assert parse_grants("") == Grant.NONE
    with pytest.raises(ValueError, match="'fly'"):
        parse_grants("publish,fly")
    assert grant_names(Grant.HOST | Grant.PUBLISH) == ["publish", "host"]
    assert grant_names(Grant.NONE) == []


def test_signing_secret() -> None:
    configured = Config(auth=AuthConfig(jwt_secret=SECRET))
    assert signing_secret(configured) == SECRET
    first, second = signing_secret(Config()), signing_secret(Config())
    assert first != second  # random per process start
    assert len(first.encode()) >= 32
    assert verify(issue_token(first, CLAIMS), secret=first) == CLAIMS
    public = Config(http=HttpConfig(host="0.0.0.0"))
    with pytest.raises(ValueError, match=r"auth\.jwt_secret"):
        signing_secret(public)
    assert len(generate_secret()) >= 32


def test_auth_config_repr_hides_the_secret() -> None:
    assert SECRET not in repr(Config(auth=AuthConfig(jwt_secret=SECRET)))
