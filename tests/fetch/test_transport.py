"""transport: bodies read once into reusable buffers, with background consumers kept in step;
and through `acl-compose fetch` against a faulty loopback server (the `site` fixture,
tests/fetch/conftest.py): retries, resumed downloads, timeouts, 404s and HTML error pages
named by URL, and a progress bar only on a terminal."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acl_compose.fetch import transport
from acl_compose.fetch.httpserve import serve
from acl_compose.fetch.transport import CHUNK, RING, Threaded, Transport
from tests.fetch.conftest import Site, sha512
from tests.flatcar_tree import IMAGE, VERSION


class _Slow:
    """A hash that dawdles on each chunk, so the reader gets far ahead if it is allowed to."""

    def __init__(self) -> None:
        self.h = hashlib.sha256()
        self.seen = 0

    def update(self, chunk: memoryview) -> None:
        time.sleep(0.002)
        self.h.update(chunk)
        self.seen += 1


@pytest.mark.parametrize("scheme", ["file", "http"])
def test_buffers_are_not_reused_under_a_slow_consumer(tmp_path: Path, scheme: str) -> None:
    data = os.urandom(3 * RING * CHUNK + 12345)  # several laps of the ring, ragged end
    (tmp_path / "f.bin").write_bytes(data)
    slow = _Slow()
    worker = Threaded(slow.update)
    t = Transport()
    try:
        if scheme == "file":
            n = t.stream((tmp_path / "f.bin").as_uri(), [worker], lambda: None)
        else:
            with serve(tmp_path) as server:
                n = t.stream(server.url + "f.bin", [worker], lambda: None)
        worker.close()
    finally:
        t.close()
    assert n == len(data)
    assert slow.h.hexdigest() == hashlib.sha256(data).hexdigest()


def test_ring_never_holds_more_than_ring_buffers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "f.bin").write_bytes(os.urandom(5 * RING * CHUNK))
    made: list[int] = []
    real = transport._Ring.take

    def take(self):  # noqa: ANN001, ANN202
        buf = real(self)
        made.append(id(buf))
        return buf

    monkeypatch.setattr(transport._Ring, "take", take)
    worker = Threaded(hashlib.sha256().update)
    Transport().stream((tmp_path / "f.bin").as_uri(), [worker], lambda: None)
    worker.close()
    assert len(set(made)) == RING  # memory stays at RING * CHUNK whatever the size


def test_threaded_error_reaches_the_caller() -> None:
    def boom(chunk: memoryview) -> None:
        raise OSError(28, "No space left on device")

    worker = Threaded(boom)
    worker.update(b"x")
    with pytest.raises(OSError, match="No space"):
        for _ in range(100):  # raised by a later update()/settle() or by close()
            worker.settle(0)
    with pytest.raises(OSError):
        worker.close()
    assert not worker._thread.is_alive()


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_bodies_without_content_length(tmp_path: Path, framing: str) -> None:
    """readinto() straight from http.client still handles chunked and close-delimited bodies."""
    from acl_compose.fetch.httpserve import RangeRequestHandler

    data = os.urandom(3 * CHUNK + 999)

    class Handler(RangeRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if framing == "chunked":
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                for i in range(0, len(data), 100_003):
                    piece = data[i : i + 100_003]
                    self.wfile.write(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)
                self.close_connection = True

    got = bytearray()

    class Collect:
        def update(self, chunk: memoryview) -> None:
            got.extend(chunk)

    t = Transport()
    try:
        with serve(tmp_path, handler=Handler) as server:
            n = t.stream(server.url + "x.bin", [Collect()], got.clear)
    finally:
        t.close()
    assert n == len(data) and bytes(got) == data


@pytest.mark.parametrize("json_out", [False, True])
def test_progress_only_on_a_terminal_without_json(site: Site, json_out: bool) -> None:
    site.faults.rules[IMAGE] = "slow"
    argv = [sys.executable, "-m", "acl_compose", "--cache-dir", str(site.cache)]
    argv += ["--json"] if json_out else []
    argv += [
        "fetch",
        "--base-url",
        site.url,
        "--release",
        VERSION,
        "--keyring",
        str(site.key.public),
        "--trusted-key",
        site.key.fingerprint,
    ]
    # script(1) gives the command a pseudo-terminal, like a user at a shell.
    proc = subprocess.run(
        ["script", "-qec", shlex.join(argv), "/dev/null"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout
    assert ("MiB/s" in proc.stdout and "ETA" in proc.stdout) is not json_out


def test_dropped_connection_resumes_with_range(site: Site) -> None:
    site.faults.rules[IMAGE] = "drop"
    data = json.loads(site.fetch("--release", VERSION, json_out=True, check=True).stdout)
    assert data["artifacts"][1]["sha512"] == sha512(site.vdir / IMAGE)
    assert site.faults.gets(IMAGE, ranged=False) == 1
    size = (site.vdir / IMAGE).stat().st_size
    ranges = [r for p, r in site.faults.log if p.endswith(IMAGE) and r]
    assert ranges == [f"bytes={size // 2}-"]


def test_5xx_is_retried(site: Site) -> None:
    site.faults.rules[IMAGE] = "503x2"
    site.fetch("--release", VERSION, check=True)
    assert site.faults.gets(IMAGE) == 3


def test_html_error_page_refused(site: Site) -> None:
    site.faults.rules[IMAGE] = "html"
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "HTML")


def test_html_page_with_binary_content_type_refused(site: Site) -> None:
    site.faults.rules[IMAGE] = "html-octet"
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "HTML")


def test_404_names_the_url(site: Site) -> None:
    (site.vdir / IMAGE).unlink()
    proc = site.fetch("--release", VERSION)
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "not found")


def test_unknown_release_404(site: Site) -> None:
    proc = site.fetch("--release", "9999.0.0")
    assert proc.returncode == 1
    assert f"error: {site.url}9999.0.0/version.txt: not found" in proc.stderr


def test_stalled_server_times_out(site: Site) -> None:
    site.faults.rules[IMAGE] = "stall"
    start = time.monotonic()
    proc = site.fetch(
        "--release", VERSION, env={"ACL_COMPOSE_READ_TIMEOUT": "1", "ACL_COMPOSE_RETRIES": "0"}
    )
    assert time.monotonic() - start < 30
    site.assert_refused(proc, f"{site.url}{VERSION}/{IMAGE}", "timed out after 1s")
