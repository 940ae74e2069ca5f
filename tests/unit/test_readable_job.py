"""Which claimed job hashes a worker runs, and which it sets aside as dead letters."""

from __future__ import annotations

import pytest

from downloader.jobs.models import CorruptJobError, Job
from downloader.store import ClaimedJob, DeadLetter
from downloader.worker.processor import readable_job


def claimed(**fields: str) -> ClaimedJob:
    raw = Job(id="Job12345678901", url="http://h/x", aggr_id="aggr").to_hash()
    raw.update(fields)
    return ClaimedJob(raw)


def test_a_sound_hash_of_the_claimed_id_and_aggregation_runs() -> None:
    job = readable_job("Job12345678901", "aggr", claimed())
    assert (job.id, job.aggr_id, job.url) == ("Job12345678901", "aggr", "http://h/x")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Bogus": "x"}, "Field Bogus with value x was not found in Job struct"),
        ({"DownloadCount": "many"}, "job Job12345678901: invalid literal"),
        ({"ID": ""}, "its ID field is '', not 'Job12345678901'"),
        ({"ID": "Other123456789"}, "its ID field is 'Other123456789'"),
        ({"AggrID": "elsewhere"}, "its AggrID field is 'elsewhere', but it was queued in 'aggr'"),
    ],
)
def test_a_hash_that_cannot_run_says_why(fields: dict[str, str], reason: str) -> None:
    with pytest.raises(CorruptJobError) as unreadable:
        readable_job("Job12345678901", "aggr", claimed(**fields))
    assert reason in str(unreadable.value)


def test_dead_letters_round_trip_and_a_hand_written_one_reads_as_its_text() -> None:
    letter = DeadLetter("aggr", "Field Bogus with value x was not found in Job struct", 1700000000.5)
    assert DeadLetter.decode(letter.encode()) == letter
    assert DeadLetter.decode("fixed by hand?") == DeadLetter("", "fixed by hand?", 0.0)
