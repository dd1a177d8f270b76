import threading
import time

import pytest

from apparate.errors import StoreError
from apparate.pipeline import QUEUE_DEPTH, Stage, StageClosed, read_ahead


def test_stage_consumes_in_order_then_finishes():
    seen: list[bytes] = []
    finished = threading.Event()
    stage = Stage("test", seen.append, finished.set)

    for number in range(20):
        stage.put(bytes([number]))
    stage.end()

    assert seen == [bytes([number]) for number in range(20)]
    assert finished.is_set()


def test_stage_error_reaches_producer():
    def consume(item: bytes) -> None:
        raise ValueError("bad item")

    stage = Stage("test", consume, lambda: None)
    stage.put(b"x")

    with pytest.raises(ValueError, match="bad item"):
        for _ in range(QUEUE_DEPTH * 10):
            stage.put(b"y")
            time.sleep(0.001)
    with pytest.raises(ValueError, match="bad item"):
        stage.end()


def test_stage_finish_error_raised_by_end():
    def finish() -> None:
        raise RuntimeError("truncated")

    stage = Stage("test", lambda item: None, finish)

    with pytest.raises(RuntimeError, match="truncated"):
        stage.end()


def test_stage_abort_frees_blocked_producer():
    release = threading.Event()
    stage = Stage("test", lambda item: release.wait(), lambda: None)
    outcome: list[BaseException] = []

    def produce() -> None:
        try:
            for _ in range(QUEUE_DEPTH * 4):
                stage.put(b"x")
        except StageClosed as error:
            outcome.append(error)

    producer = threading.Thread(target=produce)
    producer.start()
    aborter = threading.Thread(target=stage.abort)
    aborter.start()
    producer.join(10)
    release.set()
    aborter.join(10)

    assert not producer.is_alive()
    assert not aborter.is_alive()
    assert len(outcome) == 1


def test_read_ahead_keeps_order():
    items = [bytes([n]) * n for n in range(50)]

    assert list(read_ahead(iter(items), "test")) == items


def test_read_ahead_raises_producer_error():
    def produce():
        yield b"first"
        raise StoreError("damaged")

    stream = read_ahead(produce(), "test")

    assert next(stream) == b"first"
    with pytest.raises(StoreError, match="damaged"):
        next(stream)


def test_read_ahead_close_closes_source():
    closed = threading.Event()

    def produce():
        try:
            while True:
                yield b"piece"
        finally:
            closed.set()

    stream = read_ahead(produce(), "test")
    assert next(stream) == b"piece"
    stream.close()

    assert closed.is_set()
