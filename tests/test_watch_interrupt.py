"""`cadx watch` stops at once on Ctrl-C, even mid-scoring (issue 16, finding 7); no PACS needed:
a stand-in client and scorer. (tests/test_pacs.py runs the watcher against a real Orthanc.)"""

from __future__ import annotations

import io
import os
import signal
import threading
import time
from types import SimpleNamespace

import pytest
from pydicom.dataset import Dataset
from rich.console import Console

from cadx.errors import InputError
from cadx.pacs import watch as watch_module

# The scorer is stood in for; the watcher itself only reads how the bundle scores.
_BUNDLE = SimpleNamespace(precision="fp32")


class _Client:
    url = "http://pacs.invalid/dicom-web"

    def studies(self):
        study = Dataset()
        study.StudyInstanceUID = "1.2.3"
        study.NumberOfStudyRelatedInstances = 5
        study.ModalitiesInStudy = ["CT", "SEG"]
        return [study]


@pytest.fixture
def console():
    return Console(file=io.StringIO(), width=200)


def test_ctrl_c_mid_scoring_stops_the_watcher_at_once(monkeypatch, console):
    started, release = threading.Event(), threading.Event()
    pushed = []

    def deaf_scorer(client, bundle, study_uid):
        # Stands for torch/numpy inside a long C call, or a library that swallows the
        # interrupt: had it run in the main thread, Ctrl-C would not have stopped the watcher.
        started.set()
        while not release.is_set():
            try:
                release.wait(0.05)
            except KeyboardInterrupt:
                continue
        raise AssertionError("never reached: the test releases the scorer only at its end")

    monkeypatch.setattr(watch_module, "has_cadx_result", lambda client, uid: False)
    monkeypatch.setattr(watch_module, "score_study", deaf_scorer)
    monkeypatch.setattr(watch_module, "push_result", lambda *a, **k: pushed.append(a))
    interrupted_at: list[float] = []

    def interrupt_when_scoring() -> None:
        started.wait()
        interrupted_at.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_when_scoring, daemon=True).start()
    try:
        summary = watch_module.watch(_Client(), bundle=_BUNDLE, interval_s=0.01, console=console)
        returned_at = time.monotonic()
    finally:
        release.set()
    assert started.is_set() and summary.scored == [] and pushed == []
    # the signal was taken while the study was being scored, not after it
    assert returned_at - interrupted_at[0] < 5
    printed = console.file.getvalue()
    assert "stopping (interrupted) while scoring study 1.2.3: it got no result" in printed
    assert "0 studies scored" in printed and summary.interrupted == "1.2.3"


def test_ctrl_c_between_studies_does_not_say_one_was_cut_short(monkeypatch, console):
    result = SimpleNamespace(diagnosis=SimpleNamespace(patient_id="P1", to_dict=dict),
                             pushed=[])
    monkeypatch.setattr(watch_module, "has_cadx_result", lambda client, uid: False)
    monkeypatch.setattr(watch_module, "score_study", lambda client, bundle, uid: result)
    monkeypatch.setattr(watch_module, "push_result", lambda *a, **k: None)
    monkeypatch.setattr(watch_module, "summary_line", lambda diagnosis: "score 0.1")
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 3:  # polls: unstable count, scored, nothing new; then Ctrl-C
            raise KeyboardInterrupt

    monkeypatch.setattr(watch_module, "time", SimpleNamespace(sleep=sleep))
    summary = watch_module.watch(_Client(), bundle=_BUNDLE, interval_s=0.01, console=console)
    printed = console.file.getvalue()
    assert summary.scored == ["1.2.3"] and summary.interrupted is None
    assert "stopping (interrupted)\n" in printed
    assert "while scoring" not in printed and "no result" not in printed
    assert "1 studies scored" in printed


def test_a_failing_study_is_reported_from_the_worker_and_not_retried(monkeypatch, console):
    calls = []

    def bad_study(client, bundle, study_uid):
        calls.append(study_uid)
        raise InputError(f"study {study_uid}: no organ mask")

    monkeypatch.setattr(watch_module, "has_cadx_result", lambda client, uid: False)
    monkeypatch.setattr(watch_module, "score_study", bad_study)
    summary = watch_module.watch(_Client(), bundle=_BUNDLE, interval_s=0.0, console=console,
                                 max_polls=4)
    assert calls == ["1.2.3"] and list(summary.failed) == ["1.2.3"]
    assert "no organ mask" in summary.failed["1.2.3"]


def test_sigint_stops_the_watcher_even_when_inherited_ignored(monkeypatch, console):
    # A shell starts a background job (`cadx watch ... &`) with SIGINT ignored; the watcher
    # still stops on it, and puts the caller's handlers back afterwards.
    monkeypatch.setattr(watch_module, "has_cadx_result", lambda client, uid: True)
    waits = []

    def sleep(seconds):
        waits.append(seconds)
        if len(waits) == 2:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)  # the handler runs here, raising KeyboardInterrupt
        if len(waits) > 2:
            raise AssertionError("SIGINT did not stop the watcher")

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        monkeypatch.setattr(watch_module, "time", SimpleNamespace(sleep=sleep))
        summary = watch_module.watch(_Client(), bundle=_BUNDLE, interval_s=0.01, console=console)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)
    assert summary.skipped == ["1.2.3"]
    assert "stopping (interrupted)\n" in console.file.getvalue()
