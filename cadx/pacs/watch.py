"""`cadx watch`: poll a PACS and score every CT/MR study that has no cadx result yet.

A study is scored once its instance count has stayed the same over two polls (so a study that
is still arriving is not scored half-way). Studies that already hold a cadx SR are skipped,
so restarting the watcher does not answer a study twice. A study that fails (bad input) is
reported and not retried; a PACS outage is reported and polling goes on. Ctrl-C (or SIGTERM)
stops it at once, even mid-scoring: a study is pulled and scored in a worker thread while the
main thread waits on it and stays free to take the signal (the abandoned scoring ends with the
process); a result is either pushed whole (one STOW-RS request) or not at all.

A study that cannot be scored for want of an organ mask (no organ SEG of its series and no
segmenter in the bundle) is refused from its metadata, before its pixels are pulled. The
watcher takes no clinical values: it scores many patients, and one set of values given at its
start would belong to one of them at most; a bundle's fusion model says, in each result, that
its fused score was not given for want of them (score one study with its values by
`cadx diagnose --pacs --study UID --clinical ...`).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from rich.console import Console

from cadx.bundle import PatchModelBundle
from cadx.errors import CadxError
from cadx.io.atomic import write_json_atomic
from cadx.io.dicom import IMAGE_MODALITIES
from cadx.pacs.client import PacsClient, PacsError
from cadx.pacs.study import has_cadx_result, push_result, score_study, summary_line
from cadx.train.precision import bf16_emulated_warning

T = TypeVar("T")
# How often the main thread looks up from waiting on a scoring thread; a signal interrupts the
# wait itself, this only bounds the wait of a platform whose lock waits are not interruptible.
_WAIT_SLICE_S = 0.2


@dataclass
class WatchSummary:
    """What a watch session did, by study UID."""

    scored: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    interrupted: str | None = None  # the study whose scoring Ctrl-C/SIGTERM cut short, if any


class _ScoringInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while a study was being pulled, scored or pushed: it got no result."""

    def __init__(self, study_uid: str) -> None:
        super().__init__(study_uid)
        self.study_uid = study_uid


def _modalities(study) -> set[str]:
    value = study.get("ModalitiesInStudy", [])
    return {str(value)} if isinstance(value, str) else {str(v) for v in value}


def watch(client: PacsClient, bundle: PatchModelBundle, *, interval_s: float = 5.0,
          push: bool = True, out_dir: str | Path | None = None,
          console: Console | None = None, max_polls: int | None = None) -> WatchSummary:
    """Poll every `interval_s` seconds until Ctrl-C (or `max_polls` polls); returns a summary.

    Each scored study's JSON goes to `out_dir/<StudyInstanceUID>.json` when `out_dir` is set.
    """
    console = console or Console()
    summary = WatchSummary()
    handled: set[str] = set()
    last_counts: dict[str, int] = {}
    client.studies()  # fail fast on a wrong URL before announcing anything
    console.print(f"watching {client.url} every {interval_s:g} s (Ctrl-C to stop)")
    # Once here rather than per study: it holds for every study (and is in each one's JSON).
    emulated = bf16_emulated_warning(bundle.precision)
    if emulated is not None:
        console.print(f"[yellow]warning[/]: {emulated}")
    polls = 0
    previous = _stop_on_signals()
    try:
        while max_polls is None or polls < max_polls:
            polls += 1
            try:
                studies = client.studies()
            except PacsError as exc:
                console.print(f"[yellow]warning[/]: {exc}; trying again")
                time.sleep(interval_s)
                continue
            for study in studies:
                uid = str(study.StudyInstanceUID)
                count = int(study.get("NumberOfStudyRelatedInstances", 0) or 0)
                stable = last_counts.get(uid) == count
                last_counts[uid] = count
                if uid in handled or not stable:
                    continue
                if not _modalities(study) & set(IMAGE_MODALITIES):
                    continue
                handled.add(uid)
                if not _score(client, bundle, uid, push, out_dir, console, summary):
                    handled.discard(uid)  # the PACS failed, not the study: try it again
            time.sleep(interval_s)
    except _ScoringInterrupted as stop:
        summary.interrupted = stop.study_uid
        console.print(f"stopping (interrupted) while scoring study {stop.study_uid}: it got no "
                      "result; the next cadx watch scores it")
    except KeyboardInterrupt:  # between studies: none was cut short
        console.print("stopping (interrupted)")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    console.print(f"watch finished: {len(summary.scored)} studies scored, "
                  f"{len(summary.failed)} failed, {len(summary.skipped)} already answered")
    return summary


def _stop_on_signals() -> dict[int, object]:
    """Make SIGTERM (a service manager's stop) and SIGINT end the loop as Ctrl-C does, SIGINT
    also where it was inherited ignored (a shell's background job, `cadx watch ... &`);
    returns the previous handlers ({} where signals cannot be set: not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return {number: signal.signal(number, interrupt)
            for number in (signal.SIGTERM, signal.SIGINT)}


def _in_worker(work: Callable[[], T], name: str) -> T:
    """Run `work` in a daemon thread and return its result (or raise its exception), waiting in
    the main thread, where Ctrl-C and SIGTERM arrive as KeyboardInterrupt at once: torch and
    numpy hold the main thread inside long C calls, during which Python runs no handler."""
    done = threading.Event()
    outcome: dict[str, object] = {}

    def run() -> None:
        try:
            outcome["value"] = work()
        except BaseException as exc:  # handed to the waiting thread  # noqa: BLE001
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    while not done.wait(_WAIT_SLICE_S):
        pass
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _score(client: PacsClient, bundle: PatchModelBundle, study_uid: str, push: bool,
           out_dir: str | Path | None, console: Console, summary: WatchSummary) -> bool:
    """Score one study; False if the PACS failed (worth another try), True otherwise. Ctrl-C or
    SIGTERM between the pull and the end of the push raises _ScoringInterrupted."""
    try:
        if has_cadx_result(client, study_uid):
            summary.skipped.append(study_uid)
            return True
        try:
            result = _in_worker(lambda: score_study(client, bundle, study_uid),
                                f"cadx-score-{study_uid}")
            if push:
                push_result(client, bundle, result)
        except KeyboardInterrupt as stop:
            raise _ScoringInterrupted(study_uid) from stop
    except PacsError as exc:
        console.print(f"[yellow]warning[/]: study {study_uid}: {exc}; trying again")
        return False
    except CadxError as exc:
        summary.failed[study_uid] = str(exc)
        console.print(f"[red]study {study_uid} not scored[/]: {exc}")
        return True
    diagnosis = result.diagnosis
    if out_dir is not None:
        write_json_atomic(Path(out_dir) / f"{study_uid}.json",
                          {"study_uid": study_uid, **diagnosis.to_dict()})
    summary.scored.append(study_uid)
    pushed = f"; {len(result.pushed)} result objects stored" if result.pushed else ""
    console.print(f"study {study_uid} ({diagnosis.patient_id}): {summary_line(diagnosis)}"
                  f"{pushed}")
    return True
