"""sglguard's own listener: the status page, the read-only JSON API, /metrics and /healthz."""
