"""The warnings a pull keeps for its --json summary."""

import logging
import threading

from apparate.warnings_kept import WarningRecorder

log = logging.getLogger("apparate.example")


def test_keeps_warnings_from_every_thread_once():
    with WarningRecorder().attached() as recorder:
        log.warning("mirror %s failed", "m1")
        worker = threading.Thread(target=log.warning, args=("mirror m1 failed",))
        worker.start()
        worker.join()
        log.warning("no local pack written")
        log.info("resolved")

    assert recorder.messages == ["mirror m1 failed", "no local pack written"]


def test_detached_recorder_keeps_nothing_more():
    with WarningRecorder().attached() as recorder:
        pass
    log.warning("after the pull")

    assert recorder.messages == []


def test_other_loggers_not_kept():
    with WarningRecorder().attached() as recorder:
        logging.getLogger("httpx").warning("not apparate's")

    assert recorder.messages == []
