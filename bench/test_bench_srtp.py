"""SRTP kernel micro-benchmarks: compiled, pure-Python reference and pylibsrtp, in one run.

Each round protects (or unprotects) ``ROUND`` distinct 1200-byte RTP packets through a fresh
context made outside the timing, so every packet takes the normal path (new index, window
update) and none is a replay. Divide a round's time by ``ROUND`` for the per-packet cost, and
compare rows of the same run (machines are shared and noisy). Run with `make bench`.
"""

from __future__ import annotations

import os
import struct
from array import array
from collections.abc import Callable
from typing import Any

import pylibsrtp
import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from sfu._fastpath import _srtp as _srtp_c  # type: ignore[attr-defined,unused-ignore]
from sfu._fastpath import _srtp_py

ROUND = 100
SIZE = 1200
STRIDE = 1500
ROUNDS = {"cython": 300, "cython-batch": 300, "pylibsrtp": 300, "python": 30}

PROFILES = {
    "SRTP_AEAD_AES_128_GCM": (12, pylibsrtp.Policy.SRTP_PROFILE_AEAD_AES_128_GCM),
    "SRTP_AES128_CM_SHA1_80": (14, pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80),
}
KEY = os.urandom(16)
SALTS = {profile: os.urandom(salt_len) for profile, (salt_len, _) in PROFILES.items()}

# 1200-byte packets with a one-byte extension block (mid, abs-send-time, twcc), as in Chromium.
_EXT = bytes([0x10, ord("0"), 0x22, 1, 2, 3, 0x31, 0, 7, 0, 0, 0])


def _packet(seq: int) -> bytes:
    head = struct.pack("!BBHII", 0x90, 96, seq, seq * 3000, 0x1234)
    head += struct.pack("!HH", 0xBEDE, len(_EXT) // 4) + _EXT
    return head + bytes(SIZE - len(head))


PACKETS = [_packet(seq) for seq in range(1000, 1000 + ROUND)]


def _make(profile: str, impl: str, *, outbound: bool) -> Any:
    """A fresh context: (protect or unprotect, context) for one implementation."""
    salt = SALTS[profile]
    if impl == "pylibsrtp":
        policy = pylibsrtp.Policy(
            key=KEY + salt,
            ssrc_type=(
                pylibsrtp.Policy.SSRC_ANY_OUTBOUND
                if outbound
                else pylibsrtp.Policy.SSRC_ANY_INBOUND
            ),
            srtp_profile=PROFILES[profile][1],
        )
        return pylibsrtp.Session(policy=policy)
    module = _srtp_py if impl == "python" else _srtp_c
    return module.SrtpContext(profile, KEY, salt, outbound=outbound)


def _protected(profile: str) -> list[bytes]:
    sender = _srtp_c.SrtpContext(profile, KEY, SALTS[profile], outbound=True)
    return [sender.protect_rtp(p) for p in PACKETS]


def _run(
    benchmark: BenchmarkFixture,
    impl: str,
    setup: Callable[[], tuple[tuple[Any, ...], dict[str, Any]]],
    target: Callable[..., int],
) -> None:
    result = benchmark.pedantic(  # type: ignore[no-untyped-call]
        target, setup=setup, rounds=ROUNDS[impl], iterations=1
    )
    assert result == ROUND


IMPLS = ["pylibsrtp", "cython", "cython-batch", "python"]


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("impl", IMPLS)
def test_protect_1200b(benchmark: BenchmarkFixture, profile: str, impl: str) -> None:
    """Protect ROUND packets (per round)."""
    benchmark.group = f"protect {ROUND} x {SIZE} B, {profile}"
    if impl == "cython-batch":

        def setup_batch() -> tuple[tuple[Any, ...], dict[str, Any]]:
            buffer = bytearray(STRIDE * ROUND)
            for i, p in enumerate(PACKETS):
                buffer[i * STRIDE : i * STRIDE + SIZE] = p
            ctx = _make(profile, "cython", outbound=True)
            return (ctx, buffer, array("i", [SIZE] * ROUND)), {}

        def batch(ctx: Any, buffer: bytearray, lengths: array[int]) -> int:
            done: int = ctx.protect_rtp_batch(buffer, lengths, STRIDE)
            return done

        _run(benchmark, impl, setup_batch, batch)
        return

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        ctx = _make(profile, impl, outbound=True)
        return (ctx.protect if impl == "pylibsrtp" else ctx.protect_rtp,), {}

    def protect_all(protect: Callable[[bytes], bytes]) -> int:
        for p in PACKETS:
            protect(p)
        return ROUND

    _run(benchmark, impl, setup, protect_all)


@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("impl", IMPLS)
def test_unprotect_1200b(benchmark: BenchmarkFixture, profile: str, impl: str) -> None:
    """Unprotect ROUND packets (per round)."""
    benchmark.group = f"unprotect {ROUND} x {SIZE} B, {profile}"
    protected = _protected(profile)
    if impl == "cython-batch":

        def setup_batch() -> tuple[tuple[Any, ...], dict[str, Any]]:
            buffer = bytearray(STRIDE * ROUND)
            for i, p in enumerate(protected):
                buffer[i * STRIDE : i * STRIDE + len(p)] = p
            ctx = _make(profile, "cython", outbound=False)
            return (ctx, buffer, array("i", [len(p) for p in protected])), {}

        def batch(ctx: Any, buffer: bytearray, lengths: array[int]) -> int:
            done: int = ctx.unprotect_rtp_batch(buffer, lengths, STRIDE)
            return done

        _run(benchmark, impl, setup_batch, batch)
        return

    def setup() -> tuple[tuple[Any, ...], dict[str, Any]]:
        ctx = _make(profile, impl, outbound=False)
        return (ctx.unprotect if impl == "pylibsrtp" else ctx.unprotect_rtp,), {}

    def unprotect_all(unprotect: Callable[[bytes], bytes]) -> int:
        for p in protected:
            unprotect(p)
        return ROUND

    check = _make(profile, impl, outbound=False)
    unprotect = check.unprotect if impl == "pylibsrtp" else check.unprotect_rtp
    assert [unprotect(p) for p in protected] == PACKETS

    _run(benchmark, impl, setup, unprotect_all)
