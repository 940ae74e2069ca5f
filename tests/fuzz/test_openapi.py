"""Schemathesis against our own /openapi.json: every operation, requests generated from the
schema (valid and invalid), the app in-process on the suite's real Redis. No 5xx, ever.

The app runs with a prefixed API key sent with every request, so authentication and the 403
checks are on every case's path. Schemathesis' pytest integration does not work with our
pytest, so its Python API drives Hypothesis directly: EXAMPLES cases per operation and mode.
"""

from __future__ import annotations

import collections
import string
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.core.result import Ok

from downloader.api.main import create_app
from downloader.config.settings import Settings

pytestmark = pytest.mark.integration

TOKEN = "fuzz-token"
# Ids starting with a letter or digit are covered, all others are refused with 403.
API_KEYS = f"{TOKEN}={'|'.join(string.ascii_letters + string.digits)}"
#: Cases per operation and mode. An operation without inputs has one distinct case only.
EXAMPLES = {"POST /download": 250}
OTHER_EXAMPLES = 60

Statuses = collections.Counter[tuple[str, int]]


@pytest.fixture
def api_schema(redis_url: str) -> Iterator[schemathesis.BaseSchema]:
    app = create_app(Settings(redis_url=redis_url, api_keys=API_KEYS))
    yield schemathesis.openapi.from_asgi("/openapi.json", app, headers={"Authorization": f"Bearer {TOKEN}"})
    schemathesis.python.asgi.shutdown_lifespans()


def operations(schema: schemathesis.BaseSchema) -> list[schemathesis.APIOperation]:
    found = [result.ok() for result in schema.get_all_operations() if isinstance(result, Ok)]
    assert len(found) >= 8, [op.label for op in found]
    return found


def fuzz(operation: schemathesis.APIOperation, mode: GenerationMode, statuses: Statuses) -> bool:
    """Send generated requests to one operation; False when there is no request to generate."""
    label = operation.label

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES.get(label, OTHER_EXAMPLES),
        deadline=None,
        database=None,  # no .hypothesis/ directory in the repository
        suppress_health_check=list(HealthCheck),
    )
    def check(case: schemathesis.Case) -> None:
        response = case.call(headers={"Authorization": f"Bearer {TOKEN}"})
        assert response.status_code < 500, (label, case.formatted_path, case.body, response.text)
        assert response.status_code != 401, response.text
        statuses[(label, response.status_code)] += 1

    try:
        check()
    except Unsatisfiable:
        # nothing invalid to send: no body and only unconstrained string parameters
        assert mode == GenerationMode.NEGATIVE and not len(operation.body), label
        return False
    return True


def test_no_operation_answers_with_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    statuses: Statuses = collections.Counter()
    unsatisfiable = [
        operation.label
        for operation in operations(api_schema)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
        if not fuzz(operation, mode, statuses)
    ]
    total = sum(statuses.values())
    print(f"{total} requests:", dict(statuses), "no invalid requests for:", unsatisfiable)
    assert total >= 500
    # the cases reached past validation and past the key check, not only into 400s
    assert statuses[("POST /download", 201)] > 0
    assert statuses[("POST /download", 403)] > 0
