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
    up = _command(
        sub,
        "up",
        config,
        "API, worker, notifier and an embedded Redis in one process",
        "Files and Redis' data under ./data; Ctrl-C drains and stops everything (a second exits at "
        "once). Downloads and callbacks may reach private networks unless "
        "DOWNLOADER_ALLOW_PRIVATE_NETWORKS is set.",
    )
    _listen_options(up, "127.0.0.1")
    api = _command(sub, "api", config, "the HTTP API")
    _listen_options(api, "0.0.0.0")
    for name in ("worker", "processor"):
        worker = _command(
            sub, name, config, "download jobs" + (" (alias of worker)" if name == "processor" else "")
        )
        worker.add_argument(
            "--aggregation",
            "-a",
            action="append",
            default=[],
            metavar="ID",
            help="serve only this aggregation (repeatable); default: all",
        )
    _command(sub, "notifier", config, "callbacks, retries, file deletion, lease recovery")
    _command(sub, "operator", config, "the Kubernetes operator (Aggregation resources)")


def _command(
    sub: Any, name: str, config: argparse.ArgumentParser, summary: str, details: str = ""
) -> argparse.ArgumentParser:
    """A subcommand whose `--help` starts with the line `downloader --help` lists for it."""
    description = summary[:1].upper() + summary[1:] + "." + (f" {details}" if details else "")
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[config], help=summary, description=description
    )
    return parser


def _listen_options(parser: argparse.ArgumentParser, host: str) -> None:
    parser.add_argument("--host", default=host, help=f"address the API listens on (default: {host})")
    parser.add_argument(
        "--port", "-p", type=int, default=8000, help="port the API listens on (default: %(default)s)"
    )


#: Where `enqueue` and `retry` find Redis, said in both `--help` pages.
TOOLS_REDIS = (
    "Without --api it works on Redis: DOWNLOADER_REDIS_URL (or the config file's), else the "
    "embedded Redis of a `downloader up` running in this directory (found through data/up.json), "
    "else redis://127.0.0.1:6379/0."
)


def _tool_parsers(sub: Any, config: argparse.ArgumentParser) -> None:
    enqueue = _command(sub, "enqueue", config, "queue one job per URL of a file", TOOLS_REDIS)
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
    enqueue.add_argument(
        "--idempotency-prefix",
        default="enqueue-",
        metavar="P",
        help="start of each line's idempotency key (default: %(default)s); the rest hashes the "
        "file's absolute path, the line's number and text and the job options, so the same "
        "command run again queues no line twice",
    )
    enqueue.add_argument(
        "--no-idempotency",
        dest="idempotency",
        action="store_false",
        help="send no idempotency keys: a re-run queues every line again",
    )
    retry = _command(sub, "retry", config, "put Failed callbacks back in the queue", TOOLS_REDIS)
    retry.add_argument(
        "job_ids", nargs="*", metavar="JOB_ID", help="these jobs (after `--`: an id may begin with '-')"
    )
    retry.add_argument("--failed", action="store_true", help="every job whose callback is Failed")
    retry.add_argument("--aggr", metavar="ID", help="with --failed: only this aggregation")
    retry.add_argument("--dry-run", action="store_true", help="list them, change nothing")
    retry.add_argument(
        "--api", metavar="URL", help="POST /retry/<id> to this API instead of Redis (job ids only)"
    )
    retry.add_argument("--api-key", metavar="TOKEN", help="bearer token for --api ($DOWNLOADER_API_KEY)")
