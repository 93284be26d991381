"""HTTP routes of the echo service: ``POST /echo`` (offer -> answer), ``DELETE /echo/{id}``,
``PATCH /echo/{id}`` (ICE restart with an SDP fragment, as WHIP does: RFC 9725 §4.3).

Also serves the echo test page at ``GET /echo-test``: a browser check of a deployment.
"""

from __future__ import annotations

import logging
from importlib import resources

from aiohttp import web

from sfu.clock import Clock
from sfu.echo import EchoService, OfferError
from sfu.signaling.room_ws import source_address
from sfu.signaling.sdp_http import (
    ice_restart_response,
    read_ice_restart,
    read_sdp_offer,
    sdp_answer_response,
    sdp_error,
)
from sfu.transport.port import CapacityError

__all__ = ["add_echo_routes"]

log = logging.getLogger(__name__)

_NO_STORE = {"Cache-Control": "no-store"}


def add_echo_routes(
    app: web.Application,
    service: EchoService,
    clock: Clock,
    *,
    trusted_proxies: tuple[str, ...] = (),
) -> None:
    """Register the echo endpoints on ``app`` (``trusted_proxies`` as for WHIP: the
    per-source pending-transport cap applies to ``/echo`` too)."""
    trusted = frozenset(trusted_proxies)

    async def create(request: web.Request) -> web.Response:
        offer = await read_sdp_offer(request)
        if isinstance(offer, web.Response):
            return offer
        try:
            session, answer = service.create(
                offer, clock(), source=source_address(request, trusted)
            )
        except OfferError as exc:
            return sdp_error(400, f"bad offer: {exc}")
        except CapacityError as exc:
            return sdp_error(503, f"server busy: {exc}", **{"Retry-After": "5"})
        log.info("echo session created")
        return sdp_answer_response(answer, f"/echo/{session.id}")

    async def delete(request: web.Request) -> web.Response:
        if service.delete(request.match_info["session_id"], clock()):
            return web.Response(status=204)
        return sdp_error(404, "no such echo session")

    async def patch(request: web.Request) -> web.Response:
        credentials = await read_ice_restart(request)
        if isinstance(credentials, web.Response):
            return credentials
        local = service.restart_ice(request.match_info["session_id"], credentials[0])
        if local is None:
            return sdp_error(404, "no such echo session")
        return ice_restart_response(*local)

    async def page(_request: web.Request) -> web.Response:
        html = resources.files("sfu.web").joinpath("echo-test.html").read_text("utf-8")
        return web.Response(text=html, content_type="text/html", headers=_NO_STORE)

    app.router.add_post("/echo", create)
    app.router.add_delete("/echo/{session_id}", delete)
    app.router.add_patch("/echo/{session_id}", patch)
    app.router.add_get("/echo-test", page)
