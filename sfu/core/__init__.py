"""Sans-I/O forwarding core: what to forward to whom (layers, munging, retransmissions)."""
