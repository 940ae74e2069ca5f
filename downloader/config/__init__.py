"""Configuration: the settings every process reads and the API keys it accepts.

`settings` maps `DOWNLOADER_*` variables and the original's config.json onto one validated,
documented object; `apikeys` parses the keys and the aggregations each may touch.
"""
