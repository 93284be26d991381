"""Rooms: participants, publications and subscriptions, and the service the signaling calls."""
