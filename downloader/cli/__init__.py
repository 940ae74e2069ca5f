"""The `downloader` command: the services (up, api, worker alias processor, notifier,
operator), version, and the tools enqueue and retry.

It sits above every other layer, the adapters included: `dispatch` parses the command line,
`services` builds and runs the services (through `runner`, their one stop-all), `tools`
holds enqueue and retry.
"""

from downloader.cli.dispatch import main

__all__ = ["main"]
