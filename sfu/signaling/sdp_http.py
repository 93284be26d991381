"""Reading SDP offers from HTTP requests and answering them, as WHIP does (RFC 9725 §4.2).

Shared by every endpoint that takes an offer in a POST body: the same checks (content type,
size, UTF-8) and the same precise error responses everywhere.
"""

from __future__ import annotations

from aiohttp import web

__all__ = [
    "SDPFRAG_CONTENT_TYPE",
    "SDP_CONTENT_TYPE",
    "ice_restart_response",
    "read_ice_restart",
    "read_sdp_offer",
    "sdp_answer_response",
    "sdp_error",
]

SDP_CONTENT_TYPE = "application/sdp"
#: RFC 8840 SDP fragments, used by WHIP/WHEP for ICE restarts (RFC 9725 §4.3.2).
SDPFRAG_CONTENT_TYPE = "application/trickle-ice-sdpfrag"
_MAX_SDPFRAG_BYTES = 4096


def sdp_error(status: int, message: str, **headers: str) -> web.Response:
    """A plain-text error that says exactly what was wrong (never echoing the offer)."""
    return web.Response(status=status, text=message + "\n", headers=headers or None)


async def read_sdp_offer(request: web.Request) -> str | web.Response:
    """The offer in ``request``'s body, or the error response to send instead."""
    if request.content_type != SDP_CONTENT_TYPE:
        return sdp_error(415, f"Content-Type must be {SDP_CONTENT_TYPE}")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return sdp_error(413, "offer too large")
    if not body:
        return sdp_error(400, "empty body: expected an SDP offer")
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return sdp_error(400, "offer is not valid UTF-8")


def sdp_answer_response(answer: str, location: str) -> web.Response:
    """``201 Created`` with the answer and the session's location (RFC 9725 §4.2)."""
    return web.Response(
        status=201,
        body=answer.encode("utf-8"),
        content_type=SDP_CONTENT_TYPE,
        headers={"Location": location, "Cache-Control": "no-store"},
    )


async def read_ice_restart(request: web.Request) -> tuple[str, str] | web.Response:
    """The client's new (ufrag, pwd) from an ICE-restart PATCH, or the error to send.

    Only full ICE restarts are meaningful to an ICE-lite server with host candidates; a
    fragment without new credentials (plain trickled candidates) is refused with 422.
    """
    if request.content_type != SDPFRAG_CONTENT_TYPE:
        return sdp_error(415, f"Content-Type must be {SDPFRAG_CONTENT_TYPE}")
    body = await request.content.read(_MAX_SDPFRAG_BYTES + 1)
    if len(body) > _MAX_SDPFRAG_BYTES:
        return sdp_error(413, "fragment too large")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return sdp_error(400, "fragment is not valid UTF-8")
    ufrag = pwd = None
    for line in text.splitlines():
        if line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:") :].strip()
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:") :].strip()
    if not ufrag or not pwd:
        return sdp_error(422, "only ICE restarts are supported: a=ice-ufrag and a=ice-pwd needed")
    # RFC 8839 §5.4: ice-char = ALPHA / DIGIT / "+" / "/"; ufrag 4-256, pwd 22-256 chars.
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+/")
    if not (4 <= len(ufrag) <= 256 and 22 <= len(pwd) <= 256 and set(ufrag + pwd) <= allowed):
        return sdp_error(400, "invalid a=ice-ufrag or a=ice-pwd")
    return ufrag, pwd


def ice_restart_response(ufrag: str, pwd: str) -> web.Response:
    """``200 OK`` with the server's new ICE credentials as an SDP fragment (RFC 9725 §4.3.2)."""
    body = f"a=ice-ufrag:{ufrag}\r\na=ice-pwd:{pwd}\r\n"
    return web.Response(
        status=200,
        body=body.encode("ascii"),
        content_type=SDPFRAG_CONTENT_TYPE,
        headers={"Cache-Control": "no-store"},
    )
