"""Observability: what the fleet tells its operators.

`metrics` exports Prometheus series, `stats` the original's per-process stats in Redis, `logs`
the JSON or text log lines with their structured fields and secrets redacted.
"""
