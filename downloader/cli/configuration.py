"""What every command reads before it does anything: the log settings, then its settings.

A bad value of either is a ConfigurationError, which `main` turns into one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

from downloader.config import settings as settings_module
from downloader.config.settings import Settings
from downloader.errors import ConfigurationError
from downloader.observability import logs

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def configure_logging() -> None:
    # Before the settings load (their errors are logged too): the two variables directly.
    level = os.environ.get("DOWNLOADER_LOG_LEVEL", "INFO")
    if not isinstance(logging.getLevelName(level.strip().upper()), int):
        # It used to mean INFO without a word.
        raise ConfigurationError(
            f"invalid setting DOWNLOADER_LOG_LEVEL: {level!r} is none of {', '.join(LOG_LEVELS)}"
        )
    logs.configure(level, os.environ.get("DOWNLOADER_LOG_FORMAT", "text"))


def load_settings(args: argparse.Namespace, **overrides: Any) -> Settings:
    """The settings of `args.config` and the environment, with `overrides` (what `up` implies)."""
    settings = settings_module.load(args.config, **overrides)
    logs.protect(settings)  # a config file may hold secrets the environment did not
    return settings
