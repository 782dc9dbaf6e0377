"""Output formats and sparse helpers, cross-checked with qemu-img and hashlib."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
from pathlib import Path

import pytest

from acl_compose.errors import VerificationError
from acl_compose.image import outputs, sparse

MIB = 1 << 20


def sparse_file(path: Path, size: int, chunks: dict[int, bytes]) -> Path:
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks.items():
            f.seek(off)
            f.write(data)
    return path


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    # Not a whole MiB, data at odd places, a long hole in between and at the end.
    return sparse_file(
        tmp_path / "disk.bin",
        40 * MIB + 512,
        {0: b"\x01" * 1000, 5 * MIB + 17: os.urandom(70_000), 33 * MIB: b"tail"},
    )


def test_hash_sparse_equals_plain_hash(raw: Path):
    assert sparse.hash_sparse(raw) == hashlib.sha256(raw.read_bytes()).hexdigest()
    assert sparse.hash_sparse(raw, "sha512") == hashlib.sha512(raw.read_bytes()).hexdigest()


def test_copy_sparse_keeps_bytes_and_holes(raw: Path, tmp_path: Path):
    dest = tmp_path / "copy.bin"
    sparse.copy_sparse(raw, dest)
    assert dest.read_bytes() == raw.read_bytes()
    assert dest.stat().st_blocks * 512 < 2 * MIB  # holes stayed holes


def test_vhd_fixed_rounded_to_mib(raw: Path, tmp_path: Path):
    vhd = tmp_path / "disk.vhd"
    outputs.write_vhd(raw, vhd, tmp_path)
    want = outputs.vhd_size(raw.stat().st_size)
    assert want == 41 * MIB
    assert vhd.stat().st_size == want + 512
    info = json.loads(
        subprocess.run(
            ["qemu-img", "info", "--output=json", "-f", "vpc", str(vhd)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )  # noqa: E501 fmt: skip
    assert info["virtual-size"] == want
    data = vhd.read_bytes()
    assert data[: raw.stat().st_size] == raw.read_bytes()
    assert data[raw.stat().st_size : want] == bytes(want - raw.stat().st_size)
    footer = data[-512:]
    assert footer[:8] == b"conectix" and struct.unpack_from(">I", footer, 60)[0] == 2
    assert outputs.check_vhd(vhd) == want
    assert raw.stat().st_size == 40 * MIB + 512  # the raw output is left untouched


def test_vhd_footer_corruption_detected(raw: Path, tmp_path: Path):
    vhd = tmp_path / "disk.vhd"
    outputs.write_vhd(raw, vhd, tmp_path)
    with open(vhd, "r+b") as f:
        f.seek(-512 + 40, os.SEEK_END)
        f.write(b"\xff")
    with pytest.raises(VerificationError, match="checksum"):
        outputs.check_vhd(vhd)


def test_qcow2_same_content(raw: Path, tmp_path: Path):
    q = tmp_path / "disk.qcow2"
    outputs.write_qcow2(raw, q)
    r = subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "qcow2", str(raw), str(q)],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert q.stat().st_size < 2 * MIB  # compact: holes are not allocated


def test_write_outputs_names_and_hashes(raw: Path, tmp_path: Path):
    out = tmp_path / "out"
    out.mkdir()
    content = raw.read_bytes()
    res = outputs.write_outputs(raw, out, "acl-1.0", ["raw", "qcow2", "vhd"], tmp_path)
    assert [(r["format"], r["file"]) for r in res] == [
        ("raw", "acl-1.0.bin"), ("qcow2", "acl-1.0.qcow2"), ("vhd", "acl-1.0.vhd")
    ]  # fmt: skip
    assert res[0]["sha256"] == hashlib.sha256(content).hexdigest()
    for r in res:
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
    assert not raw.exists()  # the work image became the .bin


def test_outputs_reproducible_with_source_date_epoch(raw: Path, tmp_path: Path):
    """qemu-img stamps a fixed VHD with the time and a random id; with SOURCE_DATE_EPOCH the
    footer is pinned, so every format comes out byte-identical from the same raw image."""
    runs = []
    for i, sde in enumerate((1700000000, 1700000000, None)):
        src = tmp_path / f"raw{i}.bin"
        sparse.copy_sparse(raw, src)
        out = tmp_path / f"out{i}"
        out.mkdir()
        runs.append({r["format"]: r for r in
                     outputs.write_outputs(src, out, "acl-1.0", ["raw", "qcow2", "vhd"],
                                           tmp_path, sde)})  # fmt: skip
    a, b, unpinned = runs
    for fmt in ("raw", "qcow2", "vhd"):
        assert Path(a[fmt]["path"]).read_bytes() == Path(b[fmt]["path"]).read_bytes(), fmt
        assert a[fmt]["sha256"] == b[fmt]["sha256"]
    assert a["vhd"]["sha256"] != unpinned["vhd"]["sha256"]  # qemu-img's own footer differs
    vhd = Path(a["vhd"]["path"])
    outputs.check_vhd(vhd)  # our footer checksum
    info = subprocess.run(["qemu-img", "info", "--output=json", "-f", "vpc", vhd],
                          capture_output=True, text=True, check=True)  # fmt: skip
    assert json.loads(info.stdout)["virtual-size"] == outputs.vhd_size(raw.stat().st_size)
    footer = vhd.read_bytes()[-512:]
    assert int.from_bytes(footer[24:28], "big") == 1700000000 - outputs.VHD_EPOCH
