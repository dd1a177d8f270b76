"""Text the CLI prints: sizes, counts, the images table and the summaries."""

from __future__ import annotations

import dataclasses

import pytest

from apparate.catalog import ImageSummary
from apparate.cli.text import (
    binary_size,
    convert_line,
    counted,
    dry_run_report,
    gc_report,
    images_report,
    sources_report,
    stats_report,
    summary_line,
)
from apparate.convert import ConvertResult, LayerConversion
from apparate.digest import Digest
from apparate.result import LayerResult, PullResult
from apparate.sources.selection import SourceFigures
from apparate.store.collector import GcResult
from apparate.store.gc import IMAGE, UNREFERENCED, Removal
from apparate.store.history import PullRecord, Totals

BINARY_CASES = {
    "bytes": (999, "999 B"),
    "kibibytes": (1536, "1.5 KiB"),
    "max-size 40M": (40 << 20, "40.0 MiB"),
    "gibibytes": (3 << 30, "3.0 GiB"),
    "tebibytes": (5 << 40, "5.0 TiB"),
}


@pytest.mark.parametrize("size, text", BINARY_CASES.values(), ids=BINARY_CASES)
def test_binary_size(size, text):
    assert binary_size(size) == text


@pytest.mark.parametrize("count, text", [(0, "0 blobs"), (1, "1 blob"), (2, "2 blobs")])
def test_counted(count, text):
    assert counted(count, "blob") == text


def test_images_report_shows_index_digest():
    """An image picked from an index shows the index digest, as docker and ctr do."""
    manifest, index = Digest.of(b"manifest"), Digest.of(b"index")
    images = [
        ImageSummary("example.com/multi:v1", manifest, 1000, index_digest=index),
        ImageSummary("example.com/single:v1", manifest, 1000),
    ]

    rows = images_report(images).splitlines()[1:]

    assert rows[0].split()[:2] == ["example.com/multi:v1", str(index)[:19]]
    assert rows[1].split()[:2] == ["example.com/single:v1", str(manifest)[:19]]
    assert str(manifest)[:19] not in rows[0]


def test_images_report_shows_platform():
    """A stored image picked from an index names its platform, as ctr does."""
    digest = Digest.of(b"manifest")
    images = [
        ImageSummary("example.com/multi:v1", digest, 1000, platform="linux/arm64"),
        ImageSummary("example.com/broken:v1", digest, None),
    ]

    header, *rows = images_report(images).splitlines()

    assert header.split()[:3] == ["REFERENCE", "DIGEST", "PLATFORM"]
    assert rows[0].split()[2] == "linux/arm64"
    assert rows[1].split()[2:4] == ["-", "damaged"]


def gc_result(limit: int | None, removed: list[Removal]) -> GcResult:
    return GcResult(
        store="/s",
        untagged=["example.com/app:v1"],
        removed=removed,
        partial_files=["partial-" + "e" * 64],
        partial_bytes=2 << 20,
        size_before=50 << 20,
        size_after=39 << 20,
        limit=limit,
    )


def test_gc_report_prints_limit_in_its_unit():
    removed = [Removal(Digest.of(b"a"), 9 << 20, IMAGE)]

    report = gc_report(gc_result(40 << 20, removed))

    assert "limit 40.0 MiB" in report
    assert "removed 1 blob of removed images (9.0 MiB)" in report
    assert "removed 1 partial download (2.0 MiB)" in report
    assert "freed 11.0 MiB; the store holds 39.0 MiB" in report


def test_gc_report_counts_blobs():
    removed = [
        Removal(Digest.of(b"a"), 1024, UNREFERENCED),
        Removal(Digest.of(b"b"), 1024, UNREFERENCED),
    ]

    report = gc_report(gc_result(None, removed))

    assert "removed 2 blobs no image needs (2.0 KiB)" in report
    assert "limit" not in report


def test_stats_report_one_pull():
    totals = Totals(1, 1000, 200, 800, 1.5, 800)

    report = stats_report(totals, [])

    assert report.splitlines()[-1].startswith("1 pull: ")


def test_stats_report_pulls():
    totals = Totals(2, 1000, 200, 800, 1.5, 800)

    assert stats_report(totals, []).splitlines()[-1].startswith("2 pulls: ")


def test_convert_line_counts():
    layer = LayerConversion(Digest.of(b"s"), Digest.of(b"c"), 2000, 1500, 1, 1, False)
    result = ConvertResult(
        "example.com/app:v1", "example.com/app:v1-chunked", Digest.of(b"m"),
        [layer], 1500, 1, 0.5,
    )  # fmt: skip

    line = convert_line(result)

    assert "1 layer," in line
    assert "1 blob mounted" in line
    assert "1 frame reused" in line


def test_gc_report_dry_run_says_would_hold():
    result = dataclasses.replace(gc_result(None, []), dry_run=True)

    report = gc_report(result)

    assert "would free 11.0 MiB; the store would hold 39.0 MiB" in report


def pull_result(fetched: int, missing: bool, up_to_date: bool = False) -> PullResult:
    layers = [
        LayerResult(Digest.of(b"layer"), "t", 1000, missing, fetched, 1000 - fetched)
    ]
    return PullResult(
        "example.com/app:v1", Digest.of(b"m"), "linux/amd64", "/s", None, layers,
        fetched, 0.25, up_to_date=up_to_date,
    )  # fmt: skip


def test_dry_run_report_up_to_date():
    result = dataclasses.replace(pull_result(0, missing=False), up_to_date=True)

    report = dry_run_report(result)

    assert report.endswith(
        "example.com/app:v1: already up to date in the store, would fetch nothing"
    )


def test_summary_stored_image_up_to_date():
    line = summary_line(pull_result(0, missing=False, up_to_date=True))

    assert line.startswith("example.com/app:v1: already up to date in the store")
    assert "less than whole layers" not in line


def test_summary_new_tag_counts_reuse():
    line = summary_line(pull_result(0, missing=False))

    assert "fetched 0 B (1.0 kB less than whole layers)" in line


def test_summary_fetched_layer_counts_bytes():
    line = summary_line(pull_result(400, missing=True))

    assert "fetched 400 B (600 B less than whole layers)" in line
    assert "(1 of 1 layers were missing)" in line


@pytest.mark.parametrize("up_to_date", [False, True])
def test_summary_names_index_digest(up_to_date):
    index = Digest.of(b"index")
    result = pull_result(400, missing=not up_to_date, up_to_date=up_to_date)
    picked = dataclasses.replace(result, index_digest=index)

    line, alone = summary_line(picked), summary_line(result)

    assert line.endswith(f"; digest {result.digest} (linux/amd64 of index {index})")
    assert alone.endswith(f"; digest {result.digest}")


def resumed_result(fetched: int, resumed: int) -> PullResult:
    """A pull of a missing layer that kept ``resumed`` bytes of a partial download."""
    layer = LayerResult(Digest.of(b"layer"), "t", 1000, True, fetched, 0, resumed)
    return PullResult(
        "example.com/app:v1", Digest.of(b"m"), "linux/amd64", "/s", None, [layer],
        fetched, 0.25,
    )  # fmt: skip


def test_summary_names_resumed_bytes_apart():
    line = summary_line(resumed_result(600, 400))

    assert "fetched 600 B and resumed 400 B kept from an interrupted pull, " in line
    assert "reused 0 B of local chunks" in line
    assert "less than whole layers" not in line


def test_summary_saving_follows_resumed_bytes():
    """The saving counts the bytes neither fetched nor resumed."""
    layer = LayerResult(Digest.of(b"layer"), "t", 1000, True, 300, 300, 400)
    result = dataclasses.replace(resumed_result(300, 400), layers=[layer])

    line = summary_line(result)

    assert (
        "fetched 300 B and resumed 400 B kept from an interrupted pull "
        "(together 300 B less than whole layers), reused 300 B of local chunks"
    ) in line


def test_summary_omits_zero_resumed():
    assert "resumed" not in summary_line(pull_result(400, missing=True))


def test_dry_run_report_resume_column():
    report = dry_run_report(resumed_result(600, 400))

    header, row, total = report.splitlines()
    assert header.split() == ["LAYER", "SIZE", "FETCH", "RESUME", "REUSE"]
    assert row.split()[1:] == ["1.0", "kB", "600", "B", "400", "B", "0", "B"]
    assert total.endswith(
        "would fetch 600 B, resume 400 B kept from an interrupted pull, reuse 0 B"
    )


def test_dry_run_report_no_resume_column():
    assert "RESUME" not in dry_run_report(pull_result(400, missing=True))


def test_stats_report_resumed_bytes():
    totals = Totals(1, 1000, 600, 0, 1.5, 0, bytes_resumed=400)
    record = PullRecord(100.0, "example.com/app:v1", "sha256:m", 1000, 600, 0, 1.5, 400)

    report = stats_report(totals, [record])

    header, row, summary = report.splitlines()
    assert header.split()[3:6] == ["FETCHED", "RESUMED", "REUSED"]
    assert row.split()[3:9] == ["600", "B", "400", "B", "0", "B"]
    assert summary == (
        "1 pull: fetched 600 B of 1.0 kB of layers, resumed 400 B kept from "
        "interrupted pulls, saved 0 B (0%), 1.5 s"
    )


def test_stats_report_speed_of_pulls():
    fetched = PullRecord(100.0, "example.com/app:v1", "sha256:m", 1000, 1000, 0, 2.0)
    stored = PullRecord(200.0, "example.com/app:v2", "sha256:m", 1000, 0, 1000, 0.0)
    totals = Totals(2, 2000, 1000, 1000, 2.0, 1000)

    lines = stats_report(totals, [fetched, stored]).splitlines()

    assert lines[1].endswith(" 500 B/s")
    assert lines[2].endswith(" -")


def test_stats_report_no_resumed_column():
    report = stats_report(Totals(1, 1000, 200, 800, 1.5, 800), [])

    assert "RESUMED" not in report
    assert "resumed" not in report


def test_sources_report_roles():
    rows = [
        SourceFigures(1, "http://near:5000", "mirror", True, "--mirror", 0.001, None),
        SourceFigures(2, "registry.example", "origin", True, "reference", 0.002, None),
        SourceFigures(3, "http://cache:5000", "mirror", False, "--mirror", None, None),
        SourceFigures(4, "http://down:5000", "mirror", True, "--mirror", None, None),
    ]

    lines = sources_report(rows).splitlines()

    assert "mirror, resolves tags " in lines[1]
    assert " origin " in lines[2]
    assert " mirror " in lines[3]
    assert "resolves" not in lines[3]
    # A pull warns that an unreachable mirror resolves no tag, so its role agrees.
    assert "mirror, resolves tags when reachable  unreachable" in lines[4]
