"""The FHIR Bulk Data $export client (fhir/bulk_export.py) against a real loopback server that follows the
spec (support/bulk_data_server.py). Waits go through an injected sleep on a fake clock: no wall clock."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest
from support.bulk_data_server import BulkDataServer

from cds_service.admin.bulk import read_ndjson
from cds_service.admin.population import READ_TYPES
from cds_service.fhir.bulk_export import BulkExportClient, ExportCancelled
from cds_service.fhir.errors import AuthFailed, NotFound, RefusedByPolicy, Unavailable

TOKEN = "s3cret-bulk-token"
TYPES = sorted(READ_TYPES)


def patient(pid: str) -> dict:
    return {"resourceType": "Patient", "id": pid, "gender": "female", "birthDate": "1950-01-01"}


RESOURCES = [
    patient("p1"), patient("p2"),
    {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
     "code": {"coding": [{"system": "http://snomed.info/sct", "code": "449917004", "display": "Leg cramps"}]}},
    {"resourceType": "Observation", "id": "o1", "subject": {"reference": "Patient/p2"}, "status": "final",
     "code": {"coding": [{"system": "http://loinc.org", "code": "2823-3"}]},
     "valueQuantity": {"value": 3.1, "unit": "mmol/L"}},
    {"resourceType": "Encounter", "id": "e1", "subject": {"reference": "Patient/p1"}},  # a type not asked for
]


class FakeTime:
    """``sleep`` advances ``clock``; ``sleeps`` lists every wait asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


_OPEN: list[BulkExportClient] = []


@pytest.fixture(autouse=True)
def close_clients():
    yield
    while _OPEN:
        _OPEN.pop().close()


def client(server: BulkDataServer, time: FakeTime, **kwargs) -> BulkExportClient:
    options = {"token": TOKEN, "types": TYPES, "sleep": time.sleep, "clock": time.clock}
    _OPEN.append(BulkExportClient(server.base_url, **{**options, **kwargs}))
    return _OPEN[-1]


def test_export_kicks_off_polls_with_retry_after_and_downloads_the_asked_types(tmp_path) -> None:
    time, progress = FakeTime(), []
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=3, retry_after=7) as server:
        result = client(server, time, on_progress=progress.append).export(tmp_path)
    kick_off = server.seen("GET", "/$export")[0]
    assert kick_off.path == "/fhir/Patient/$export"
    assert kick_off.headers["accept"] == "application/fhir+json" and kick_off.headers["prefer"] == "respond-async"
    assert kick_off.query["_type"] == [",".join(TYPES)] and "Encounter" not in kick_off.query["_type"][0]
    assert kick_off.query["_outputFormat"] == ["application/fhir+ndjson"]
    assert result.polls == 4 and time.sleeps == [7.0, 7.0, 7.0]  # Retry-After honoured, three 202s then 200
    assert progress == ["1 of 3 steps", "2 of 3 steps", "3 of 3 steps"]
    assert result.manifest.requires_access_token is True
    assert sorted(f.type for f in result.manifest.output) == ["Condition", "Observation", "Patient"]
    assert all(r.authorised for r in server.requests)  # the bearer token on every call, downloads too
    assert len(server.seen("GET", "/files/")) == 3
    assert server.seen("DELETE", "/$export-status/")  # done: the server may free the files
    records = {r.patient_id: r for r in read_ndjson(list(result.files))}
    assert sorted(records) == ["p1", "p2"]
    assert [e["resource"]["id"] for e in records["p1"].prefetch["conditions"]["entry"]] == ["c1"]


def test_retry_after_as_an_http_date_and_group_export(tmp_path) -> None:
    time = FakeTime()
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=2, retry_after=30, retry_after_date=True,
                        groups=("cohort-7",)) as server:
        result = client(server, time, group_id="cohort-7").export(tmp_path)
    assert server.seen("GET", "/$export")[0].path == "/fhir/Group/cohort-7/$export"
    assert len(time.sleeps) == 2  # an HTTP date 30 s ahead (to the second): a wait of up to 30 s, each time
    assert all(15 < seconds <= 30 for seconds in time.sleeps), time.sleeps
    assert len(result.files) == 3


def test_the_total_wait_is_bounded_and_the_export_cancelled(tmp_path) -> None:
    time = FakeTime()
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=1000, retry_after=60) as server:
        with pytest.raises(Unavailable) as caught:
            client(server, time, max_wait_seconds=300).export(tmp_path)
        assert caught.value.cause == "deadline"
        assert len(server.seen("GET", "/$export-status/")) == 6 and sum(time.sleeps) == 300
        assert server.seen("DELETE", "/$export-status/")
        assert all(export.deleted for export in server.exports.values())


def test_a_retry_after_over_the_cap_is_waited_only_up_to_it(tmp_path) -> None:
    time = FakeTime()
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=1, retry_after=86400) as server:
        client(server, time).export(tmp_path)
    assert time.sleeps == [120.0]


def test_without_the_token_the_kick_off_is_refused_with_the_servers_words(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN) as server:
        with pytest.raises(AuthFailed) as caught:
            client(server, FakeTime(), token=None).export(tmp_path)
    assert caught.value.status == 401 and "bearer token is required" in (caught.value.detail or "")
    assert TOKEN not in str(caught.value) and TOKEN not in (caught.value.detail or "")


def test_downloads_need_the_bearer_token(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=0) as server:
        export = client(server, FakeTime())
        manifest, _ = export.wait(export.kick_off())
        url = manifest.output[0].url
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(url, timeout=5)
        assert refused.value.code == 401
        refused.value.close()
        with pytest.raises(AuthFailed):
            export.download(url, tmp_path / "x.ndjson", requires_token=False)  # the token left off: 401
        assert export.download(url, tmp_path / "x.ndjson", requires_token=True) > 0


def test_a_failed_export_is_a_typed_error_with_the_operation_outcome(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN, fail_status=500) as server:
        with pytest.raises(Unavailable) as caught:
            client(server, FakeTime()).export(tmp_path)
    assert caught.value.status == 500 and caught.value.cause == "server_error"
    assert "out of disk space" in caught.value.detail
    assert "export status" in caught.value.reason


def test_error_files_of_the_manifest_are_downloaded_and_counted(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=0, error_file=True) as server:
        result = client(server, FakeTime()).export(tmp_path)
    assert len(result.error_files) == 1 and "OperationOutcome" in result.error_files[0].read_text()
    assert len(result.files) == 3


def test_an_expired_export_is_not_found(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=5) as server:
        export = client(server, FakeTime())
        status_url = export.kick_off()
        export.cancel(status_url)
        with pytest.raises(NotFound) as caught:
            export.wait(status_url)
    assert "expired or is unknown" in caught.value.reason


def test_cancel_while_polling_deletes_the_export(tmp_path) -> None:
    time = FakeTime()
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=50) as server:
        with pytest.raises(ExportCancelled):
            client(server, time, should_stop=lambda: len(time.sleeps) >= 2).export(tmp_path)
        assert len(server.seen("GET", "/$export-status/")) == 2
        assert len(server.seen("DELETE", "/$export-status/")) == 1
        assert all(export.deleted for export in server.exports.values())
        assert not server.seen("GET", "/files/")


def test_an_output_url_on_another_host_is_refused_and_never_fetched(tmp_path) -> None:
    with BulkDataServer(RESOURCES, token=TOKEN, polls_before_ready=0) as server:
        server.output_origin = f"http://localhost:{server.port}"  # another host name: not the export server
        with pytest.raises(RefusedByPolicy) as caught:
            client(server, FakeTime()).export(tmp_path)
        assert not server.seen("GET", "/files/")  # nothing sent there, the token least of all
        assert "not on the export server" in caught.value.reason
        # ... unless that origin is allowlisted by the operator
        result = client(server, FakeTime(), allowed_output_prefixes=[server.output_origin]).export(tmp_path / "b")
        assert len(result.files) == 3


def test_kick_off_without_prefer_is_refused_by_the_server() -> None:
    with BulkDataServer(RESOURCES, token=TOKEN) as server:
        request = urllib.request.Request(f"{server.base_url}/Patient/$export",
                                         headers={"Accept": "application/fhir+json",
                                                  "Authorization": f"Bearer {TOKEN}"})
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=5)
    with refused.value:
        assert refused.value.code == 400 and b"respond-async" in refused.value.read()
