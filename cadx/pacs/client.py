"""A DICOMweb client (QIDO-RS, WADO-RS, STOW-RS via `dicomweb-client`) that retries with
exponential backoff and turns every network or server failure into one clear PacsError."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import requests
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cadx.errors import CadxError

T = TypeVar("T")
RETRY_STATUSES = (408, 429, 500, 502, 503, 504)


class PacsError(CadxError):
    """The PACS is unreachable, refuses a request or answers with an error."""


def _dataset(item: dict) -> Dataset:
    """A DICOM JSON object as a pydicom Dataset (bulk data left out)."""
    return Dataset.from_json(item, bulk_data_uri_handler=lambda *_: b"")


class PacsClient:
    """DICOMweb access to one PACS; `retries` attempts with backoff `backoff_s` * 2**n.

    Connection errors and the statuses in RETRY_STATUSES are retried (STOW-RS too: storing
    the same SOP instance twice is idempotent); any failure left raises PacsError.
    """

    def __init__(self, url: str, *, retries: int = 4, backoff_s: float = 0.5,
                 timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        retry = Retry(total=retries, connect=retries, read=retries, status=retries,
                      backoff_factor=backoff_s, status_forcelist=RETRY_STATUSES,
                      allowed_methods=None, raise_on_status=True)
        session = requests.Session()
        adapter = HTTPAdapter(max_retries=retry)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        self._client = DICOMwebClient(self.url, session=session, timeout=timeout_s)
        # One retry policy, the session's: dicomweb-client's own would retry every failure
        # again, 5 times with up to 10 s waits, on top of it.
        self._client.set_http_retry_params(retry=False)
        self._attempts = retries + 1

    def _call(self, what: str, request: Callable[[], T]) -> T:
        try:
            return request()
        except requests.exceptions.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "?"
            raise PacsError(f"{self.url}: {what} failed (HTTP {status})") from None
        except requests.exceptions.RetryError as exc:
            raise PacsError(f"{self.url}: {what} failed after {self._attempts} attempts "
                            f"({_reason(exc)})") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{self.url}: PACS unreachable during {what} after "
                            f"{self._attempts} attempts ({_reason(exc)})") from None

    def studies(self, search_filters: dict[str, str] | None = None) -> list[Dataset]:
        """QIDO-RS study query (all studies when no filter)."""
        return [_dataset(item) for item in self._call("study query", lambda: (
            self._client.search_for_studies(search_filters=search_filters,
                                            fields=["NumberOfStudyRelatedInstances",
                                                    "ModalitiesInStudy"],
                                            get_remaining=True)))]

    def series(self, study_uid: str) -> list[Dataset]:
        """QIDO-RS series of a study."""
        return [_dataset(item) for item in self._call(f"series query of study {study_uid}", (
            lambda: self._client.search_for_series(study_instance_uid=study_uid,
                                                   get_remaining=True)))]

    def series_metadata(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS metadata (headers without pixel data) of every instance of a series."""
        return [_dataset(item) for item in self._call(f"metadata of series {series_uid}", (
            lambda: self._client.retrieve_series_metadata(study_uid, series_uid)))]

    def retrieve_series(self, study_uid: str, series_uid: str) -> list[Dataset]:
        """WADO-RS retrieval of every instance of a series, with pixel data."""
        return self._call(f"retrieval of series {series_uid}",
                          lambda: self._client.retrieve_series(study_uid, series_uid))

    def store(self, datasets: Sequence[Dataset], study_uid: str) -> None:
        """STOW-RS all `datasets` in one request; PacsError if the PACS refuses any of them."""
        response = self._call(f"storing results in study {study_uid}", (
            lambda: self._client.store_instances(list(datasets), study_instance_uid=study_uid)))
        failed = response.get("FailedSOPSequence", []) if response is not None else []
        if failed:
            uids = ", ".join(str(item.get("ReferencedSOPInstanceUID", "?")) for item in failed)
            raise PacsError(f"{self.url}: the PACS refused {len(failed)} of {len(datasets)} "
                            f"result instances ({uids})")


def _reason(exc: Exception) -> str:
    """The innermost cause of a requests/urllib3 error, on one line."""
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = str(getattr(cause, "reason", None) or cause).strip().splitlines()
    return (text[0] if text else type(cause).__name__)[:160]
