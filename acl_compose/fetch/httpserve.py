"""Serve a directory over HTTP on loopback, in a background thread.

Used by `acl-compose testbed serve` and by tests that need a real release server.
Unlike `http.server.SimpleHTTPRequestHandler` it answers single `Range: bytes=` requests
(206), so clients can resume, and it sends file bodies with sendfile(2).
"""

from __future__ import annotations

import http.server
import os
import re
import socket
import threading
from pathlib import Path
from types import TracebackType
from typing import Any

from acl_compose.errors import InputError
from acl_compose.ui import opt

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class RangeRequestHandler(http.server.SimpleHTTPRequestHandler):
    """Static files with single-range support; quiet (no access log on stderr)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes; with Nagle on, the body waits for the
    # client's delayed ACK (40 ms per request). Real release servers set TCP_NODELAY too.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def send_head(self):  # type: ignore[override]
        self._range: tuple[int, int] | None = None
        path = self.translate_path(self.path)
        header = self.headers.get("Range")
        if not header or os.path.isdir(path):
            return super().send_head()
        try:
            f = open(path, "rb")  # noqa: SIM115 - returned to the caller, closed by it
        except OSError:
            self.send_error(404, "File not found")
            return None
        size = os.fstat(f.fileno()).st_size
        m = _RANGE.match(header.strip())
        start: int
        end: int
        if m and (m.group(1) or m.group(2)):
            if m.group(1):
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
            else:  # suffix range: the last N bytes
                start = max(0, size - int(m.group(2)))
                end = size - 1
            end = min(end, size - 1)
        else:
            f.close()
            return super().send_head()
        if start >= size or start > end:
            f.close()
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(path))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        f.seek(start)
        self._range = (start, end)
        return f

    def copyfile(self, source, outputfile) -> None:  # type: ignore[override]
        # sendfile: the kernel copies file -> socket; loopback throughput stays near curl's.
        rng = getattr(self, "_range", None)
        start = source.tell()
        total = os.fstat(source.fileno()).st_size
        count = (rng[1] - rng[0] + 1) if rng else total - start
        offset = start
        try:
            while count > 0:
                sent = os.sendfile(self.connection.fileno(), source.fileno(), offset, count)
                if sent == 0:
                    break
                offset += sent
                count -= sent
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True


class Server:
    """A running loopback HTTP server; `.url` ends with '/'."""

    def __init__(self, httpd: http.server.ThreadingHTTPServer, thread: threading.Thread) -> None:
        self._httpd = httpd
        self._thread = thread
        host, port = httpd.server_address[:2]
        self.host = str(host)
        self.port = int(port)
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{self.port}/"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> Server:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def serve(
    directory: str | os.PathLike[str],
    bind: str = "127.0.0.1",
    port: int = 0,
    *,
    handler: type[http.server.SimpleHTTPRequestHandler] = RangeRequestHandler,
) -> Server:
    """Start serving `directory` in a daemon thread; port 0 picks a free port.

    `handler` may be a RangeRequestHandler subclass (tests inject faults that way); it is
    bound to `directory` here.
    """
    root = str(Path(directory).resolve())

    class _Bound(handler):  # type: ignore[valid-type, misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("directory", root)
            super().__init__(*args, **kwargs)

    class _Server(_ThreadingServer):
        address_family = socket.AF_INET6 if ":" in bind else socket.AF_INET

    try:
        httpd = _Server((bind, port), _Bound)
    except (OSError, OverflowError) as e:  # taken, not ours, out of range, unknown address
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise InputError(
            f"cannot serve on {bind}:{port}: {reason}",
            hint=f"choose another {opt('--port', 'port')} (0 picks a free one) or "
            f"{opt('--bind', 'address')}",
        ) from None
    thread = threading.Thread(target=httpd.serve_forever, name=f"httpserve:{root}", daemon=True)
    thread.start()
    return Server(httpd, thread)
