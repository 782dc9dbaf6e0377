"""HTTP(S) and file:// downloads: timeouts, retries with backoff, Range resume, sanity checks.

Bodies are read once, straight into a small ring of reusable buffers (one copy from the
socket), and each buffer is handed to `sinks` (the temp file, hashers, a gpgv pipe) as a
memoryview. Sinks that keep working on a buffer after `update()` returns (`Threaded`) are
waited for before that buffer is refilled, so memory stays at RING * CHUNK whatever the file
size. Knobs come from the environment so tests and slow links can tune them:
ACL_COMPOSE_CONNECT_TIMEOUT, ACL_COMPOSE_READ_TIMEOUT (seconds), ACL_COMPOSE_RETRIES,
ACL_COMPOSE_BACKOFF (first retry delay, doubled each time).
"""

from __future__ import annotations

import collections
import http.client
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import requests
import urllib3

from acl_compose import __version__
from acl_compose.errors import FetchError
from acl_compose.fetch.release import local_path
from acl_compose.ui import opt

CHUNK = 1 << 20
RING = 8  # read buffers in flight: how far a background hasher may lag behind the socket
USER_AGENT = f"acl-compose/{__version__} python-requests/{requests.__version__}"
_RETRY_STATUS = {429, 500, 502, 503, 504}
# Files whose names say they are HTML/text may legitimately start like a web page.
_TEXTUAL = (".html", ".htm", ".txt", ".json", ".asc", ".DIGESTS")


class NotFound(FetchError):
    """The server (or directory) has no such file: HTTP 404/410 or a missing local file."""


class Sink(Protocol):
    """Takes the body chunk by chunk. The view is only valid during the call, unless the sink
    also has `settle(limit)` (see Threaded): then the transport calls settle before it reuses
    a buffer, and the sink may keep the view until that call returns."""

    def update(self, chunk: memoryview, /) -> None: ...


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, default))
    except ValueError:
        return default


@dataclass
class Settings:
    connect_timeout: float = 10.0
    read_timeout: float = 60.0
    retries: int = 4
    backoff: float = 1.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            connect_timeout=_env_float("ACL_COMPOSE_CONNECT_TIMEOUT", cls.connect_timeout),
            read_timeout=_env_float("ACL_COMPOSE_READ_TIMEOUT", cls.read_timeout),
            retries=int(_env_float("ACL_COMPOSE_RETRIES", cls.retries)),
            backoff=_env_float("ACL_COMPOSE_BACKOFF", cls.backoff),
        )


class Threaded:
    """Runs `update(chunk)` in a background thread, in order.

    hashlib and pipe writes release the GIL, so on two cores the hash runs beside the socket
    reads and disk writes instead of after them. Chunks may be views of buffers the caller
    reuses: `settle(n)` returns once at most n chunks are still unprocessed, which is what
    the transport waits for before refilling a buffer. At most `depth` chunks are queued
    (update() blocks), so memory stays bounded for any caller. An error in the thread is
    raised by update()/settle()/close().
    """

    _STOP = object()

    def __init__(self, update: Callable[[memoryview], object], depth: int = RING) -> None:
        self._update = update
        self._depth = depth
        self._items: collections.deque[object] = collections.deque()
        self._pending = 0  # queued or being processed
        self._cond = threading.Condition()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._items:
                    self._cond.wait()
                item = self._items.popleft()
            if item is self._STOP:
                return
            if self._error is None:  # after an error keep draining so nobody waits forever
                try:
                    self._update(item)  # type: ignore[arg-type]
                except BaseException as e:  # noqa: BLE001 - handed to the caller
                    self._error = e
            with self._cond:
                self._pending -= 1
                self._cond.notify_all()

    def settle(self, limit: int) -> None:
        """Wait until at most `limit` chunks are unprocessed."""
        with self._cond:
            while self._pending > limit:
                self._cond.wait()
        if self._error:
            raise self._error

    def update(self, chunk: memoryview | bytes) -> None:
        self.settle(self._depth - 1)
        with self._cond:
            self._items.append(chunk)
            self._pending += 1
            self._cond.notify_all()

    def close(self) -> None:
        if self._thread.is_alive():
            with self._cond:
                self._items.append(self._STOP)
                self._cond.notify_all()
            self._thread.join()
        if self._error:
            raise self._error


class _Ring:
    """RING reusable read buffers, allocated as needed (a small file uses one).

    Before a buffer is refilled every sink that may still hold a view of it is settled: with
    FIFO sinks, at most RING-1 unprocessed chunks means the oldest buffer is free.
    """

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self._bufs: list[bytearray] = []
        self._next = 0
        self._lagging = [s for s in sinks if hasattr(s, "settle")]

    def take(self) -> bytearray:
        if len(self._bufs) < RING:
            self._bufs.append(bytearray(CHUNK))
            return self._bufs[-1]
        buf = self._bufs[self._next]
        self._next = (self._next + 1) % RING
        for s in self._lagging:
            s.settle(RING - 1)  # type: ignore[attr-defined]
        return buf


def _pump(
    readinto: Callable[[bytearray], int | None],
    sinks: Sequence[Sink],
    ring: _Ring,
    first: Callable[[memoryview], None] | None = None,
    advance: Callable[[int], None] | None = None,
) -> int:
    """Read until EOF into ring buffers and feed every sink; returns the byte count."""
    done = 0
    while True:
        buf = ring.take()
        n = readinto(buf)
        if not n:
            return done
        view = memoryview(buf)[:n]
        if first is not None and done == 0:
            first(view)
        for sink in sinks:
            sink.update(view)
        done += n
        if advance is not None:
            advance(n)


class Progress:
    """One stderr line with bytes, speed and ETA, redrawn at most 10 times a second."""

    def __init__(self, label: str, total: int | None) -> None:
        self.label, self.total, self.done = label, total, 0
        self.start = self._last = time.monotonic()
        self._drawn = False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if now - self._last >= 0.1:
            self._last = now
            self._drawn = True
            self._draw(now)

    def _draw(self, now: float, end: str = "") -> None:
        rate = self.done / max(now - self.start, 1e-6)
        text = f"{self.label}  {self.done / 2**20:,.1f}"
        if self.total:
            left = (self.total - self.done) / rate if rate else 0
            text += f"/{self.total / 2**20:,.1f} MiB  {rate / 2**20:,.1f} MiB/s  ETA {left:4.0f}s"
        else:
            text += f" MiB  {rate / 2**20:,.1f} MiB/s"
        sys.stderr.write(f"\r\x1b[K{text}{end}")
        sys.stderr.flush()

    def close(self) -> None:
        if self._drawn:  # small files finish before the first redraw: no line at all
            self._draw(time.monotonic(), "\n")


class Transport:
    """A requests session plus the retry/resume policy."""

    def __init__(self, settings: Settings | None = None, progress: bool = False) -> None:
        self.settings = settings or Settings.from_env()
        self.progress = progress
        self.session = requests.Session()
        # identity: hash exactly the bytes as published, never a transfer-compressed form.
        self.session.headers.update({"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})

    def close(self) -> None:
        self.session.close()

    def exists(self, url: str) -> bool:
        """False only when the server says 404/410 (or a local file is missing)."""
        if url.startswith("file://"):
            return local_path(url).exists()
        s = self.settings
        try:
            r = self.session.head(
                url, timeout=(s.connect_timeout, s.read_timeout), allow_redirects=True
            )
        except requests.RequestException:
            return True  # unknown: let the real request report the problem
        return r.status_code not in (404, 410)

    def get_bytes(self, url: str, limit: int = 16 << 20) -> bytes:
        """A small file (version.txt, DIGESTS, signatures) into memory."""
        buf = bytearray()

        class _Collect:
            def update(self, chunk: bytes | memoryview) -> None:
                buf.extend(chunk)
                if len(buf) > limit:
                    raise FetchError(f"{url}: larger than {limit} bytes, not a metadata file")

        def reset() -> None:
            buf.clear()

        self.stream(url, [_Collect()], reset, progress_label=None)
        return bytes(buf)

    def stream(
        self,
        url: str,
        sinks: Sequence[Sink],
        restart: Callable[[], None],
        progress_label: str | None = None,
    ) -> int:
        """Stream `url` into `sinks`; returns the byte count.

        After an interruption the transfer resumes with a Range request and the sinks keep
        their state; if the server cannot resume, `restart()` must reset them and the body is
        sent again from byte 0.
        """
        if url.startswith("file://"):
            return _stream_file(url, sinks)
        s = self.settings
        done, total, attempt = 0, None, 0
        bar: Progress | None = None
        ring = _Ring(sinks)

        def advance(n: int) -> None:
            nonlocal done, attempt
            done += n
            attempt = 0  # progress was made: the retry budget starts over
            if bar:
                bar.advance(n)

        try:
            while True:
                headers = {"Range": f"bytes={done}-"} if done else {}
                try:
                    with self.session.get(
                        url,
                        headers=headers,
                        stream=True,
                        timeout=(s.connect_timeout, s.read_timeout),
                        allow_redirects=True,
                    ) as r:
                        if r.status_code in (404, 410):
                            raise NotFound(
                                f"{url}: not found (HTTP {r.status_code})",
                                hint=_check_where(),
                            )
                        if r.status_code in _RETRY_STATUS:
                            raise _Retryable(f"HTTP {r.status_code} {r.reason}")
                        if done and r.status_code == 200:
                            restart()  # server ignored Range: start over
                            done = 0
                        elif done and r.status_code == 206:
                            start = _content_range_start(r.headers.get("Content-Range", ""))
                            if start != done:
                                raise FetchError(
                                    f"{url}: server resumed at byte {start}, not {done}"
                                )
                        elif r.status_code != 200:
                            raise FetchError(
                                f"{url}: HTTP {r.status_code} {r.reason}",
                                hint="the server refused the request",
                            )
                        if total is None or r.status_code == 200:
                            total = _expected_total(r)
                        if done == 0:
                            _sanity_check(url, r)
                        if bar is None and self.progress and progress_label:
                            bar = Progress(progress_label, total)
                        sniff = (lambda v: _sniff_html(url, v)) if done == 0 else None
                        _pump(_body_reader(r), sinks, ring, sniff, advance)
                    if total is not None and done < total:
                        raise _Retryable(f"connection closed after {done} of {total} bytes")
                    if total is not None and done > total:
                        raise FetchError(
                            f"{url}: got {done} bytes, more than the announced {total}"
                        )
                    return done
                except (
                    _Retryable,
                    requests.ConnectionError,
                    requests.Timeout,
                    requests.exceptions.ChunkedEncodingError,
                    urllib3.exceptions.HTTPError,
                    http.client.HTTPException,  # IncompleteRead: the body ended early
                    ConnectionError,
                    TimeoutError,  # a read timeout while reading the body
                ) as e:
                    attempt += 1
                    if attempt > s.retries:
                        raise FetchError(
                            f"{url}: {_describe(e, s)} (gave up after {attempt} attempts)",
                            hint="check the network or the server; timeouts and retries are set"
                            " with ACL_COMPOSE_READ_TIMEOUT / ACL_COMPOSE_RETRIES",
                        ) from e
                    time.sleep(min(s.backoff * 2 ** (attempt - 1), 30))
        finally:
            if bar:
                bar.close()


class _Retryable(Exception):
    pass


def _describe(e: BaseException, s: Settings) -> str:
    text = str(e)
    if isinstance(e, requests.ConnectTimeout):
        return f"connect timed out after {s.connect_timeout:g}s"
    if isinstance(e, requests.Timeout) or "timed out" in text.lower():
        return f"read timed out after {s.read_timeout:g}s"
    if isinstance(e, requests.ConnectionError):
        reason = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
        return "connection failed: " + (reason.group(1).strip() if reason else text[:120])
    return text.splitlines()[0][:160] if text else type(e).__name__


def _content_range_start(value: str) -> int:
    # "bytes 100-199/200"
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return -1


def _expected_total(r: requests.Response) -> int | None:
    if r.status_code == 206:
        total = r.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = r.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _sanity_check(url: str, r: requests.Response) -> None:
    """An HTML page where a release file should be is a portal or an error page."""
    ctype = r.headers.get("Content-Type", "").split(";")[0].strip().lower()
    name = url.rsplit("/", 1)[-1]
    if ctype in ("text/html", "application/xhtml+xml") and not name.endswith((".html", ".htm")):
        raise FetchError(
            f"{url}: server sent an HTML page ({ctype}), not the file",
            hint=_portal_hint(),
        )


def _portal_hint() -> str:
    return "the URL is probably wrong or a proxy/captive portal answered; check " + opt(
        "--base-url", "the base URL"
    )


def _check_where() -> str:
    return (
        f"check {opt('--release', 'the release')}, {opt('--board', 'the board')}, "
        f"{opt('--base-url', 'the base URL')} and the artifact name"
    )


def _sniff_html(url: str, chunk: bytes | memoryview) -> None:
    name = url.rsplit("/", 1)[-1]
    if name.endswith(_TEXTUAL):
        return
    head = bytes(chunk[:256]).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml")):
        raise FetchError(
            f"{url}: server sent an HTML page, not the file",
            hint=_portal_hint(),
        )


def _body_reader(r: requests.Response) -> Callable[[bytearray], int | None]:
    """readinto() of the body as sent (no content decoding), with a single copy.

    urllib3's own read() copies each chunk three more times (and costs more CPU than the
    hashing); the http.client response underneath reads straight into our buffer and still
    handles Content-Length, chunked encoding and read timeouts.
    """
    fp = getattr(r.raw, "_fp", None)
    if isinstance(fp, http.client.HTTPResponse):
        return fp.readinto

    def readinto(buf: bytearray) -> int:  # any other urllib3: its documented API
        data = r.raw.read(len(buf), decode_content=False)
        buf[: len(data)] = data
        return len(data)

    return readinto


def _stream_file(url: str, sinks: Sequence[Sink]) -> int:
    path = local_path(url)
    try:
        f = open(path, "rb", buffering=0)  # noqa: SIM115
    except FileNotFoundError as e:
        raise NotFound(
            f"{path}: no such file",
            hint=f"check {opt('--base-url', 'the base URL')} and the artifact name",
        ) from e
    except OSError as e:
        raise FetchError(f"{path}: {e.strerror}") from e
    with f:
        return _pump(f.readinto, sinks, _Ring(sinks))
