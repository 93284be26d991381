"""Static browser assets served by the HTTP server (no third-party scripts, fonts or CDNs)."""
