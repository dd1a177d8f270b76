import dataclasses

import pytest

from apparate.digest import Digest
from apparate.result import LayerResult, PullResult
from apparate.store.history import PullHistory


def result(reference: str, fetched: int) -> PullResult:
    layers = [
        LayerResult(
            Digest.of(reference.encode()), "t", 1000, True, fetched, 1000 - fetched
        )
    ]
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


def test_huge_limit_lists_all(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(result("example.com/app:v1", 1000), now=100.0)

        recent = history.recent(10**20)
    finally:
        history.close()

    assert [record.reference for record in recent] == ["example.com/app:v1"]


def test_empty_history_sums_to_zero(tmp_path):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        totals = history.totals()
    finally:
        history.close()

    assert totals.pulls == 0
    assert totals.bytes_saved == 0


def stored_result(reference: str) -> PullResult:
    """A pull of an image whose layers were all stored already."""
    layers = [LayerResult(Digest.of(reference.encode()), "t", 1000, False, 0, 1000)]
    return PullResult(
        reference, Digest.of(b"m"), "linux/amd64", "/s", None, layers, 0, 0.1
    )


SAVED_CASES = {
    "already stored": [stored_result("example.com/app:v1")],
    "fetched whole": [result("example.com/app:v1", 1000)],
    "delta": [result("example.com/app:v2", 200)],
    # A retried range can fetch more than the layer; that pull saved nothing,
    # and it takes nothing from what another pull saved.
    "fetched twice, then stored": [
        result("example.com/app:v1", 1500),
        stored_result("example.com/app:v1"),
    ],
}


@pytest.mark.parametrize("results", SAVED_CASES.values(), ids=SAVED_CASES)
def test_totals_saved_sums_pull_saved(tmp_path, results):
    history = PullHistory(tmp_path / "apparate.db")
    try:
        for pulled in results:
            history.record(pulled)
        totals = history.totals()
        records = history.recent(10)
    finally:
        history.close()

    assert totals.bytes_saved == sum(pulled.bytes_saved for pulled in results)
    assert sorted(r.bytes_saved for r in records) == sorted(
        pulled.bytes_saved for pulled in results
    )


def test_pull_of_stored_image_saves_every_layer():
    pulled = stored_result("example.com/app:v1")

    assert pulled.bytes_saved == 1000
    assert pulled.to_dict()["bytes_saved"] == 1000


def test_up_to_date_pull_saves_nothing(tmp_path):
    pulled = dataclasses.replace(stored_result("example.com/app:v1"), up_to_date=True)
    history = PullHistory(tmp_path / "apparate.db")
    try:
        history.record(pulled)
        totals = history.totals()
    finally:
        history.close()

    assert pulled.bytes_saved == 0
    assert pulled.bytes_reused == 0
    assert pulled.to_dict()["bytes_saved"] == 0
    assert (totals.pulls, totals.layer_bytes, totals.bytes_saved) == (1, 0, 0)
    assert totals.bytes_reused == 0
