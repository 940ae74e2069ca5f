"""Every `downloader <command> --help` starts with what the command does, and the listening
options of `up` and `api` say what they are and their defaults."""

from __future__ import annotations

import argparse

import pytest

from downloader.cli import dispatch

COMMANDS = ["up", "api", "worker", "processor", "notifier", "operator", "enqueue", "retry"]


def help_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        dispatch.main([*argv, "--help"])
    assert info.value.code == 0
    return " ".join(capsys.readouterr().out.split())  # argparse wraps lines at the terminal's width


def summaries() -> dict[str, str]:
    """What `downloader --help` lists for each command."""
    sub = next(a for a in dispatch._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return {action.dest: str(action.help) for action in sub._choices_actions}


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_help_says_what_it_does(capsys: pytest.CaptureFixture[str], command: str) -> None:
    summary = summaries()[command]
    text = help_of(capsys, command)
    # Between the usage and the options: the summary `downloader --help` lists, as a sentence.
    assert f"] {summary[0].upper()}{summary[1:]}" in text or f" {summary[0].upper()}{summary[1:]}." in text
    assert text.index(summary[1:]) < text.index(" options: ")


@pytest.mark.parametrize(("command", "host"), [("up", "127.0.0.1"), ("api", "0.0.0.0")])
def test_host_and_port_have_help_and_defaults(
    capsys: pytest.CaptureFixture[str], command: str, host: str
) -> None:
    text = help_of(capsys, command)
    assert f"--host HOST address the API listens on (default: {host})" in text
    assert "--port PORT, -p PORT port the API listens on (default: 8000)" in text


def test_the_tools_help_says_where_they_find_redis(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("enqueue", "retry"):
        text = help_of(capsys, command)
        assert "a `downloader up` running in this directory" in text
    assert "--api URL POST /retry/<id> to this API instead of Redis" in help_of(capsys, "retry")
