"""One router per resource: downloads, jobs, callbacks (retry), stats, health, ui (the
dashboard page and its JSON) and prometheus (GET /metrics and the request counts)."""
