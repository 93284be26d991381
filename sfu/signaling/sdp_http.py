"""Reading SDP offers from HTTP requests and answering them, as WHIP does (RFC 9725 §4.2).

Shared by every endpoint that takes an offer in a POST body: the same checks (content type,
size, UTF-8) and the same precise error responses everywhere.
"""

from __future__ import annotations

from aiohttp import web

__all__ = ["SDP_CONTENT_TYPE", "read_sdp_offer", "sdp_answer_response", "sdp_error"]

SDP_CONTENT_TYPE = "application/sdp"


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
