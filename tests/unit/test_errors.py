"""Error messages as warnings quote them."""

from __future__ import annotations

import pytest

from apparate.errors import ApparateError, NotFound, reason_for_warning


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            ApparateError("layer x: responded 200 to a range"),
            "responded 200 to a range",
        ),
        (ApparateError("layer x from host: it failed"), "from host: it failed"),
        (ApparateError("no chunk table annotations"), "no chunk table annotations"),
        (NotFound("layer x not found (HTTP 404)"), "not found (HTTP 404)"),
        (NotFound("layer x: gone", hint="check the name"), "gone"),
        (OSError("layer x: disk failed"), "disk failed"),
    ],
)
def test_reason_for_warning_drops_subject_and_hint(error, reason):
    assert reason_for_warning(error, "layer x") == reason


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "layer x from m.example: the transfer failed once",
            "the transfer failed once",
        ),
        (
            "layer x from http://m.example ended after 5 of 9 bytes",
            "ended after 5 of 9 bytes",
        ),
        ("layer x from other.example: it failed", "from other.example: it failed"),
        ("layer x: cannot connect to m.example", "cannot connect to m.example"),
    ],
)
def test_reason_for_warning_drops_named_source(message, reason):
    error = ApparateError(message)

    named = reason_for_warning(error, "layer x", ("http://m.example", "m.example"))

    assert named == reason
