"""Downloader: an asynchronous, rate-limited, Kubernetes-native download service.

The core lives here (settings, models, the Redis layer, fetching, checks, storage,
notification, stats); the processes are in `downloader.api`, `downloader.worker` and
`downloader.operator`, and the `downloader` CLI in `downloader.cli`.
"""

from downloader.version import __version__

__all__ = ["__version__"]
