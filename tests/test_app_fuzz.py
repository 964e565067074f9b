"""Property-based fuzzing of the whole API, in-process through the ASGI app (schemathesis):
whatever the schema allows or forbids, no server error and every response as documented."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance
from test_app_support import API_KEY, app_for, build_index

pytestmark = pytest.mark.filterwarnings("ignore")
EXAMPLES = 25  # per operation: the whole API in well under two minutes on two busy cores


def test_no_server_errors_and_documented_responses(tmp_path) -> None:
    index = build_index(tmp_path, n=6)
    app = app_for(index, reload_interval_s=0, max_k=20)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15
    try:
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case) -> None:
                # Every check but "schema-valid data is accepted": a schema cannot say "a
                # decodable image" or "not all zeros"; the limits it can say, it says.
                case.call_and_validate(
                    headers={"X-API-Key": API_KEY}, excluded_checks=[positive_data_acceptance]
                )

            check()
    finally:
        index.close()
