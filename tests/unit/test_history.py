from apparate.digest import Digest
from apparate.result import LayerResult, PullResult
from apparate.store.history import PullHistory


def result(reference: str, fetched: int) -> PullResult:
    layers = [LayerResult(Digest.of(reference.encode()), "t", 1000, True, fetched)]
    return PullResult(
        reference, Digest.of(b"m"), "linux/amd64", "/s", None, layers, fetched, 2.0
    )


def test_history_records_and_sums(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(result("example.com/app:v1", 1000), now=100.0)
        history.record(result("example.com/app:v2", 200), now=200.0)

        recent = history.recent(10)
        totals = history.totals()
    finally:
        history.close()

    assert [record.reference for record in recent] == [
        "example.com/app:v2",
        "example.com/app:v1",
    ]
    assert totals.pulls == 2
    assert totals.layer_bytes == 2000
    assert totals.bytes_fetched == 1200
    assert totals.bytes_saved == 800
    assert totals.seconds == 4.0


def test_empty_history_sums_to_zero(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        totals = history.totals()
    finally:
        history.close()

    assert totals.pulls == 0
    assert totals.bytes_saved == 0
