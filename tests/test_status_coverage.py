"""Every case of ../shared/spec/STATUS.md is covered by named tests.

The table below maps each STATUS.md row (by the start of its case text) to the tests that pin its answer.
The test reads STATUS.md itself: a row added there without a test here fails, and so does a mapping to a
row that no longer exists or to a test function that is not in the named file.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
STATUS_MD = TESTS.parents[1] / "shared" / "spec" / "STATUS.md"

# STATUS.md case (start of its first cell, markup removed) -> tests ("file::function") that cover it.
COVERAGE: dict[str, tuple[str, ...]] = {
    "body is not JSON, not an object": (
        "test_http_contract.py::test_status_table", "test_security.py::test_wrong_content_type_is_415",
    ),
    "hook, hookInstance or context missing or of the wrong type": (
        "test_http_contract.py::test_status_table",
        "test_input_types.py::test_hook_request_every_field_every_wrong_type_is_400_naming_it",
        "test_input_types.py::test_unhashable_hook_is_400_not_500",
        "test_limits.py::test_identifier_over_its_bound_is_400_naming_it",
        "test_limits.py::test_a_15_mb_hook_instance_is_refused_not_stored_or_logged",
    ),
    "hook differs from the service's hook": ("test_http_contract.py::test_status_table",),
    "unknown service id": ("test_http_contract.py::test_unknown_service_id_post_is_404",),
    "fhirAuthorization without fhirServer": ("test_http_contract.py::test_status_table",),
    "a prefetch key the service did not ask for": ("test_http_contract.py::test_status_table",),
    "a prefetch value that is null, an OperationOutcome, or missing": (
        "test_http_contract.py::test_status_table",
        "test_fhir_fetch.py::test_fetch_no_prefetch_and_no_fhir_server_is_412",
        "test_fhir_fetch.py::test_fetch_optional_key_failing_is_not_checked",
    ),
    "a prefetch Bundle with a next link": (
        "test_fhir_paging.py::test_allowlisted_fhir_server_page_two_is_read_and_the_dvt_card_fires",
        "test_fhir_paging.py::test_incomplete_required_conditions_and_no_card_is_412_never_an_all_clear",
        "test_fhir_paging.py::test_a_card_found_on_page_one_is_returned_and_says_the_data_may_be_incomplete",
        "test_fhir_fetch.py::test_fetch_partial_prefetch_next_link_elsewhere_is_incomplete",
    ),
    "one resource inside a prefetch Bundle fails validation": (
        "test_input_types.py::test_prefetch_record_element_of_a_wrong_type_is_skipped_and_counted",
        "test_limits.py::test_skipped_records_are_one_log_line_with_counts_by_type_and_reason",
        "test_limits.py::test_skipped_records_reach_the_facts_the_cards_use",
        "test_input_types.py::test_patient_birth_date_of_a_wrong_type_is_400",
    ),
    "required data still unobtainable": (
        "test_fhir_fetch.py::test_fetch_network_error_is_412_naming_the_keys",
        "test_fhir_fetch.py::test_fetch_client_error_is_final_and_412",
        "test_fhir_fetch.py::test_fetch_deadline_slow_required_key_is_412_in_time",
    ),
    "data must be fetched but fhirServer is not on the allowlist": (
        "test_fhir_fetch.py::test_fetch_refused_server_is_412_without_a_call",
        "test_security.py::test_fhir_server_not_allowed_is_412_without_any_network_call",
    ),
    "fhirAuthorization already expired by expires_in": (
        "test_fhir_fetch.py::test_fetch_expired_token_is_not_sent",
        "test_fhir_fetch.py::test_fetch_expired_token_on_a_secured_server_is_412",
    ),
    "no or invalid CDS-client JWT": (
        "test_security.py::test_attack_is_refused_with_a_bare_401_and_no_outbound_request",
        "test_security.py::test_the_audience_never_follows_the_request",
    ),
    "body larger than the limit": ("test_security.py::test_oversized_body_is_413_with_an_operation_outcome",),
    "more resources than the per-request cap": (
        "test_limits.py::test_more_resources_than_the_cap_is_413_naming_it_before_any_validation",
        "test_limits.py::test_the_default_cap_refuses_the_200000_observation_bundle",
    ),
    "headers over their limit": (
        "test_security.py::test_a_16_kib_token_gets_past_the_header_limits",
        "test_security.py::test_headers_over_the_limit_are_431_with_an_operation_outcome",
    ),
    "the shared JWT replay store (database or Redis) unreachable": (
        "test_outage.py::test_postgres_outage_serves_cards_refuses_feedback_and_recovers",
        "test_outage.py::test_redis_outage_through_a_proxy_falls_back_and_recovers",
    ),
    "the card ledger's database unreachable": (
        "test_outage.py::test_postgres_outage_serves_cards_refuses_feedback_and_recovers",
        "test_outage.py::test_sqlite_locked_by_another_connection_serves_cards_and_refuses_feedback",
    ),
    "feedback while the database is unreachable": (
        "test_outage.py::test_postgres_outage_serves_cards_refuses_feedback_and_recovers",
        "test_outage.py::test_sqlite_locked_by_another_connection_serves_cards_and_refuses_feedback",
    ),
    "feedback: malformed, or an unknown outcome": (
        "support/feedback.py::test_feedback_invalid_body_is_400_naming_the_field",
        "test_input_types.py::test_feedback_every_field_every_wrong_type_is_400_naming_it",
    ),
    "feedback: a card uuid this service never issued": (
        "support/feedback.py::test_feedback_for_unknown_card_is_404_and_stores_nothing",
    ),
    "feedback: the same item sent again": ("support/feedback.py::test_feedback_same_item_twice_is_stored_once",),
}


def _plain(cell: str) -> str:
    return re.sub(r"\s+", " ", cell.replace("`", "").replace("*(rev)*", "")).strip()


def status_md_cases() -> list[str]:
    """The first cell of every row of STATUS.md's case table (its header and rule rows left out)."""
    if not STATUS_MD.is_file():
        pytest.skip(f"shared material not found at {STATUS_MD}")
    cases = []
    for line in STATUS_MD.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) >= 2 and cells[0] not in ("case", "") and not set(cells[0]) <= set("-: "):
            cases.append(_plain(cells[0]))
    return cases


def _rows_for(key: str, cases: list[str]) -> list[str]:
    return [case for case in cases if case.startswith(key)]


def test_status_md_has_the_rows_this_table_knows() -> None:
    cases = status_md_cases()
    assert len(cases) >= 20, f"STATUS.md's table was not read: {cases}"
    for key in COVERAGE:
        assert len(_rows_for(key, cases)) == 1, f"no single STATUS.md row starts with {key!r}"


def test_every_status_md_case_has_tests() -> None:
    cases = status_md_cases()
    uncovered = [case for case in cases if not any(case.startswith(key) for key in COVERAGE)]
    assert not uncovered, f"STATUS.md rows with no test named in COVERAGE: {uncovered}"


def _functions_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


@pytest.mark.parametrize("case", sorted(COVERAGE))
def test_the_tests_named_for_a_case_exist(case: str) -> None:
    for reference in COVERAGE[case]:
        file_name, function = reference.split("::")
        matches = list(TESTS.rglob(file_name))
        assert len(matches) == 1, f"{reference}: test file not found (or found twice) under {TESTS}"
        assert function in _functions_in(matches[0]), f"{reference}: no such test function"
