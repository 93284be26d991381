"""Signaling over HTTP: SDP offer/answer endpoints (echo now; rooms, WHIP and WHEP next)."""
