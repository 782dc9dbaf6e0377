"""transport: bodies read once into reusable buffers, with background consumers kept in step."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from acl_compose.fetch import transport
from acl_compose.fetch.httpserve import serve
from acl_compose.fetch.transport import CHUNK, RING, Threaded, Transport


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
