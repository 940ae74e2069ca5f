"""The command line: argparse with every command, option and help text, and `main`, which
maps a command to the function that runs it.

`main` turns the errors of any command into one line on stderr: status 2 for a bad setting
or option, 1 for any other DownloaderError, 130 for Ctrl-C before the signal handlers.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from downloader.cli import services, tools
from downloader.cli.configuration import configure_logging
from downloader.errors import ConfigurationError, DownloaderError
from downloader.version import __version__

COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "operator": services.run_operator,
    "up": services.run_up,
    "api": services.run_api,
    "worker": services.run_worker,
    "processor": services.run_worker,
    "notifier": services.run_notifier,
    "enqueue": tools.enqueue_urls,
    "retry": tools.retry_callbacks,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command is None:
        _parser().print_help()
        return 2
    if args.command == "version":
        print(f"Downloader Version {__version__}")
        return 0
    try:
        configure_logging()
        return COMMANDS[args.command](args)
    except ConfigurationError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 2
    except DownloaderError as exc:
        print(f"downloader: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were in place
        print("downloader: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="downloader", description="Async rate-limited downloading service")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config.json in the original's format (DOWNLOADER_* variables win)",
    )
    sub = parser.add_subparsers(dest="command", metavar="command")
    _service_parsers(sub, config)
    sub.add_parser("version", help="print the version")
    _tool_parsers(sub, config)
    return parser


def _service_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    up = sub.add_parser(
        "up", parents=[config], help="API, worker, notifier and an embedded Redis in one process"
    )
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--port", "-p", type=int, default=8000)
    api = sub.add_parser("api", parents=[config], help="the HTTP API")
    api.add_argument("--host", default="0.0.0.0")
    api.add_argument("--port", "-p", type=int, default=8000)
    for name in ("worker", "processor"):
        worker = sub.add_parser(
            name,
            parents=[config],
            help="download jobs" + (" (alias of worker)" if name == "processor" else ""),
        )
        worker.add_argument(
            "--aggregation",
            "-a",
            action="append",
            default=[],
            metavar="ID",
            help="serve only this aggregation (repeatable); default: all",
        )
    sub.add_parser("notifier", parents=[config], help="callbacks, retries, file deletion, lease recovery")
    sub.add_parser("operator", parents=[config], help="the Kubernetes operator (Aggregation resources)")


def _tool_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    enqueue = sub.add_parser("enqueue", parents=[config], help="queue one job per URL of a file")
    enqueue.add_argument("file", metavar="FILE", help="one URL per line ('-': stdin; # comments skipped)")
    enqueue.add_argument("--aggr", required=True, metavar="ID", help="aggregation id of every job")
    enqueue.add_argument("--limit", required=True, type=int, metavar="N", help="the aggregation's limit")
    enqueue.add_argument("--callback-url", metavar="URL")
    enqueue.add_argument("--callback-type", metavar="T", help="http, kafka or sqs (with --callback-dst)")
    enqueue.add_argument("--callback-dst", metavar="D")
    enqueue.add_argument("--mime-type", metavar="P", help="accepted mime types, e.g. 'image/*'")
    enqueue.add_argument("--extract-image-size", action="store_true")
    enqueue.add_argument("--extra", metavar="S", help="passed back in the callback")
    enqueue.add_argument("--api", metavar="URL", help="POST to this API instead of writing to Redis")
    enqueue.add_argument("--api-key", metavar="TOKEN", help="bearer token for --api ($DOWNLOADER_API_KEY)")
    enqueue.add_argument("--ids", metavar="FILE", help="write 'line<TAB>url<TAB>job id' per queued job")
    retry = sub.add_parser("retry", parents=[config], help="put Failed callbacks back in the queue")
    retry.add_argument(
        "job_ids", nargs="*", metavar="JOB_ID", help="these jobs (after `--`: an id may begin with '-')"
    )
    retry.add_argument("--failed", action="store_true", help="every job whose callback is Failed")
    retry.add_argument("--aggr", metavar="ID", help="with --failed: only this aggregation")
    retry.add_argument("--dry-run", action="store_true", help="list them, change nothing")
