"""The HTTP API: the original's routes, the job routes, health and OpenAPI (FastAPI)."""
