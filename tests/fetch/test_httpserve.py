"""httpserve: a loopback static server with Range support (used by fetch tests and testbed)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import requests

from acl_compose.fetch.httpserve import serve


@pytest.fixture
def served(tmp_path: Path):
    data = os.urandom(100_000)
    (tmp_path / "f.bin").write_bytes(data)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello\n")
    with serve(tmp_path) as server:
        yield server, data


def test_url_and_whole_file(served) -> None:
    server, data = served
    assert server.url == f"http://127.0.0.1:{server.port}/"
    r = requests.get(server.url + "f.bin", timeout=10)
    assert r.status_code == 200 and r.content == data
    assert r.headers["Content-Length"] == str(len(data))
    assert requests.get(server.url + "sub/a.txt", timeout=10).text == "hello\n"


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=10-19", 10, 19),
        ("bytes=99990-", 99990, 99999),
        ("bytes=-5", 99995, 99999),
        ("bytes=50-999999", 50, 99999),
    ],
)
def test_ranges(served, header: str, start: int, end: int) -> None:
    server, data = served
    r = requests.get(server.url + "f.bin", headers={"Range": header}, timeout=10)
    assert r.status_code == 206
    assert r.content == data[start : end + 1]
    assert r.headers["Content-Range"] == f"bytes {start}-{end}/{len(data)}"


def test_curl_resume_agrees(served, tmp_path: Path) -> None:
    """An independent client (curl -C -) resumes a partial file against this server."""
    server, data = served
    out = tmp_path / "partial"
    out.write_bytes(data[:30_000])
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(out), server.url + "f.bin"], check=True)
    assert out.read_bytes() == data


def test_errors(served) -> None:
    server, _ = served
    assert requests.get(server.url + "missing", timeout=10).status_code == 404
    r = requests.get(server.url + "f.bin", headers={"Range": "bytes=200000-"}, timeout=10)
    assert r.status_code == 416
    assert requests.get(server.url + "../../etc/passwd", timeout=10).status_code == 404


def test_close_stops_serving(tmp_path: Path) -> None:
    server = serve(tmp_path)
    url = server.url
    server.close()
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)
