"""aiortc, whose SRTP is libsrtp, echoes media through the server's SRTP kernel under each
DTLS-SRTP profile: AES-CM-HMAC-SHA1-80 as well as the preferred AES-128-GCM (Chromium covers
GCM in test_echo_chromium)."""

from __future__ import annotations

import asyncio

import aiortc.rtcdtlstransport as aiortc_dtls
import pytest
from clients import TIMEOUT, aiortc_echo, delete, frames, running_server

from sfu import _fastpath
from sfu.transport.dtls import SrtpProfile

pytestmark = pytest.mark.integration

AIORTC_PROFILES = {
    SrtpProfile.AEAD_AES_128_GCM: aiortc_dtls.SRTP_AEAD_AES_128_GCM,
    SrtpProfile.AES128_CM_SHA1_80: aiortc_dtls.SRTP_AES128_CM_SHA1_80,
}


@pytest.mark.parametrize("profile", list(SrtpProfile))
def test_aiortc_echo_under_each_srtp_profile(
    monkeypatch: pytest.MonkeyPatch, profile: SrtpProfile
) -> None:
    # aiortc offers only this profile, so the server has to use it.
    monkeypatch.setattr(aiortc_dtls, "SRTP_PROFILES", [AIORTC_PROFILES[profile]])

    async def scenario() -> None:
        async with running_server() as (server, base), aiortc_echo(base) as echo:
            _pc, tracks, location, _answer = echo
            assert await asyncio.wait_for(frames(tracks["video"], 10), TIMEOUT) == 10
            assert await asyncio.wait_for(frames(tracks["audio"], 10), TIMEOUT) == 10
            transport = server.port.get(location.rsplit("/", 1)[1])
            assert transport is not None and transport.srtp_keys is not None
            assert transport.srtp_keys.profile is profile
            srtp = transport._srtp
            assert srtp is not None and isinstance(srtp.inbound, _fastpath.SrtpContext)
            assert srtp.inbound.stream_count >= 2 and srtp.outbound.stream_count >= 2
            assert srtp.counters.auth == srtp.counters.malformed == 0
            assert await delete(base, location) == 204

    asyncio.run(asyncio.wait_for(scenario(), 3 * TIMEOUT))
