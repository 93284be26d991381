"""Observability: plain counters read at scrape time, the Prometheus collector and /metrics."""
