"""Image references resolved on a worker: verified by content, cached, never trusted blindly."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from acl_compose.errors import InputError, VerificationError
from acl_compose.fetch import serve
from acl_compose.fetch.httpserve import RangeRequestHandler
from acl_compose.matrix import images


class Recording(RangeRequestHandler):
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        Recording.seen.append(self.path)
        super().do_GET()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_path_image_checked_once_and_again_when_it_changes(tmp_path: Path) -> None:
    img = tmp_path / "disk.img"
    img.write_bytes(b"A" * 5000)
    ref = {"kind": "path", "location": str(img), "sha256": sha(b"A" * 5000)}
    got = images.resolve(ref, tmp_path / "cache")
    assert got.path == img and got.verified.startswith("sha256")
    assert len(list((tmp_path / "cache" / "matrix" / "verified").iterdir())) == 1
    img.write_bytes(b"B" * 5000)  # same size, new content (and mtime): checked again
    os.utime(img, ns=(1, 1))
    with pytest.raises(VerificationError, match="does not match"):
        images.resolve(ref, tmp_path / "cache")


def test_url_image_downloaded_once_and_verified(tmp_path: Path) -> None:
    site = tmp_path / "site"
    site.mkdir()
    data = os.urandom(300_000)
    (site / "tiny.img").write_bytes(data)
    Recording.seen = []
    with serve(site, handler=Recording) as server:
        ref = {"kind": "url", "location": f"{server.url}tiny.img", "sha256": sha(data)}
        first = images.resolve(ref, tmp_path / "cache")
        second = images.resolve(ref, tmp_path / "cache")
        assert first.path == second.path and first.path.read_bytes() == data
        assert Recording.seen == ["/tiny.img"]  # the second cell used the worker's cache
        bad = {**ref, "sha256": sha(b"other")}
        with pytest.raises(VerificationError):
            images.resolve(bad, tmp_path / "cache2")
    assert not list((tmp_path / "cache2").rglob("tiny.img"))  # nothing unverified kept


def _release(d: Path, data: bytes) -> Path:
    d.mkdir()
    (d / "r-1.bin").write_bytes(data)
    outputs = [{"format": "raw", "file": "r-1.bin", "sha256": sha(data), "size": len(data)}]
    (d / "release.json").write_text(json.dumps({"outputs": outputs}))
    return d


def test_release_dir_and_url_use_release_json_digest(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    rel = _release(tmp_path / "rel", data)
    got = images.resolve({"kind": "release", "location": str(rel)}, tmp_path / "cache")
    assert got.path == rel / "r-1.bin" and got.release_json == rel / "release.json"
    with serve(tmp_path) as server:
        ref = {"kind": "release", "location": f"{server.url}rel/"}
        got = images.resolve(ref, tmp_path / "cache")
        assert got.path.read_bytes() == data and got.release_json.name == "release.json"
        assert got.path.parent != rel  # a copy in the worker's cache, not the served tree
    (rel / "r-1.bin").write_bytes(os.urandom(100_000))
    with pytest.raises(VerificationError, match="does not match"):
        images.resolve({"kind": "release", "location": str(rel)}, tmp_path / "cache")


def test_child_process_resolution_keeps_verdicts_and_error_kinds(tmp_path: Path) -> None:
    """Workers resolve in a child (Dask workers are daemonic: no multiprocessing pools)."""
    img = tmp_path / "disk.img"
    img.write_bytes(b"C" * 4096)
    ok = {"kind": "path", "location": str(img), "sha256": sha(b"C" * 4096)}
    got = images.resolve_in_child(ok, tmp_path / "cache")
    assert got.path == img and got.sha256 == ok["sha256"] and got.release_json is None
    with pytest.raises(VerificationError, match="does not match"):
        images.resolve_in_child({**ok, "sha256": sha(b"x")}, tmp_path / "cache")
    with pytest.raises(InputError, match="not found on this worker"):
        images.resolve_in_child({**ok, "location": str(tmp_path / "gone")}, tmp_path / "cache")


def test_release_output_choice_prefers_raw_and_the_qemu_platform() -> None:
    outs = [
        {"format": "vhd", "platform": "azure", "file": "r.vhd", "sha256": "1"},
        {"format": "qcow2", "platform": "qemu", "file": "r.qcow2", "sha256": "2"},
        {"format": "raw", "platform": "azure", "file": "r-azure.bin", "sha256": "3"},
        {"format": "raw", "platform": "qemu", "file": "r.bin", "sha256": "4"},
    ]
    assert images._pick_output({"outputs": outs}, None, "x")["file"] == "r.bin"
    assert images._pick_output({"outputs": outs}, "qcow2", "x")["file"] == "r.qcow2"
    assert images._pick_output({"outputs": outs[2:3]}, None, "x")["file"] == "r-azure.bin"
    with pytest.raises(InputError, match="lists no raw or qcow2 output"):
        images._pick_output({"outputs": outs[:1]}, None, "x")
    bad = [{"format": "raw", "file": "../r.bin", "sha256": "5"}]
    with pytest.raises(VerificationError, match="has a path"):
        images._pick_output({"outputs": bad}, None, "x")
