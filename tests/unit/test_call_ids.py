"""Script call ids: unique within the process without a random draw per call, and unlike
another process's (a resent call recognises only its own earlier write)."""

from __future__ import annotations

import subprocess
import sys
import threading

from downloader.store.records import new_call_id


def test_call_ids_never_repeat_across_threads() -> None:
    drawn: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        into.extend(new_call_id() for _ in range(5_000))

    threads = [threading.Thread(target=draw, args=(d,)) for d in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for d in drawn for i in d]
    assert len(set(every)) == len(every) == 40_000


def test_another_process_draws_other_ids() -> None:
    code = "from downloader.store.records import new_call_id; print(new_call_id(), new_call_id())"
    theirs = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    their_ids = theirs.stdout.split()
    ours = {new_call_id() for _ in range(100)}
    assert len(their_ids) == 2 and their_ids[0] != their_ids[1]
    assert not ours & set(their_ids)
    assert their_ids[0][:12] != next(iter(ours))[:12]  # a prefix of its own
