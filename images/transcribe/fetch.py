"""Bring the job's media to a local file: a URL through yt-dlp (audio only), or an object in the bucket."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

from bucketrun.events.destinations import Resolver, allowed_schemes, resolved_problem, system_resolver, url_problem
from bucketrun.events.errors import NotFound, StorageError
from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.events.result_cache import media_id
from bucketrun.events.storage import Bucket


def check_url(url: str, resolve: Resolver = system_resolver) -> None:
    """Intake refused what the URL shows; this catches a host name that resolves inside the network, checked
    right before the fetch. Both are bad input: never retried."""
    problem = url_problem(url) or resolved_problem(url, resolve)
    if problem:
        raise JobFailure(FailureClass.BAD_INPUT, f"URL {problem}", where="source.url")


class UrlSession:
    """One yt-dlp extraction, then (only if still needed) its download: the metadata names the media (its
    extractor's id) before any media byte is fetched, so a cached result can be served without a download."""

    def __init__(self, ydl, info: dict, workdir: Path):
        self.ydl, self.info, self.workdir = ydl, info, workdir

    @property
    def media_id(self) -> str | None:
        return media_id(self.info)

    def download(self) -> Path:
        with _translated():
            info = self.ydl.process_ie_result(self.info, download=True)
            path = Path(self.ydl.prepare_filename(info))
        if not path.is_file():
            found = sorted(self.workdir.glob("source.*"))
            if not found:
                raise JobFailure(FailureClass.DOWNLOAD_ERROR, "yt-dlp reported success but wrote no file",
                                 where="source.url")
            path = found[0]
        return path


@contextlib.contextmanager
def _translated() -> Iterator[None]:
    from yt_dlp.utils import DownloadError, UnsupportedError  # late: yt-dlp (heavy) only when a URL is fetched

    try:
        yield
    except DownloadError as exc:
        message = str(exc).removeprefix("ERROR: ").strip().splitlines()[0]
        cause = getattr(exc, "exc_info", None)
        unsupported = isinstance(cause[1] if cause else None, UnsupportedError) or "Unsupported URL" in message
        if unsupported:
            raise JobFailure(FailureClass.BAD_INPUT, f"yt-dlp found no media at this URL: {message}",
                             where="source.url") from exc
        raise JobFailure(FailureClass.DOWNLOAD_ERROR, f"download failed: {message}", where="source.url") from exc


@contextlib.contextmanager
def url_session(url: str, workdir: Path, on_progress: Callable[[float], None] | None = None) -> Iterator[UrlSession]:
    check_url(url)
    try:
        import yt_dlp  # late: yt-dlp (heavy) only when a URL is fetched
    except ImportError as exc:
        raise JobFailure(FailureClass.CODE_ERROR, "yt-dlp is not installed; install bucketrun[transcribe]") from exc

    def hook(d: dict) -> None:
        if on_progress and d.get("status") == "downloading":
            total = d.get("total_bytes") or d.get("total_bytes_estimate")
            if total:
                on_progress(min(d.get("downloaded_bytes", 0) / total, 1.0))

    opts = {
        "format": "bestaudio/best",
        "outtmpl": str(workdir / "source.%(ext)s"),
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "progress_hooks": [hook],
        "retries": 3,
        "socket_timeout": 30,
        "cachedir": False,
        "enable_file_urls": "file" in allowed_schemes(),
    }
    with yt_dlp.YoutubeDL(opts) as ydl:
        with _translated():
            info = ydl.extract_info(url, download=False)
        yield UrlSession(ydl, info, workdir)


def fetch_url(url: str, workdir: Path, on_progress: Callable[[float], None] | None = None) -> Path:
    with url_session(url, workdir, on_progress) as session:
        return session.download()


def fetch_key(bucket: Bucket, key: str, workdir: Path) -> Path:
    path = workdir / ("source" + (Path(key).suffix or ".bin"))
    try:
        bucket.download(key, path)
    except NotFound as exc:
        raise JobFailure(FailureClass.BAD_INPUT, f"source key {key!r} does not exist in {bucket.url}",
                         where="source.key") from exc
    except StorageError as exc:
        raise JobFailure(FailureClass.DOWNLOAD_ERROR, f"reading source key {key!r} failed: {exc}",
                         where="source.key") from exc
    return path
