"""`acl-compose verify`: accepts a composed release, and names each check a flipped byte (in
the release's signature, an output, a sysext, /usr or an OEM sysext) or a wrong certificate
breaks."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest

from acl_compose.image import fs, gpt
from acl_compose.image.outputs import copy_sparse
from acl_compose.image.sparse import data_ranges
from tests.compose.runs import flip, verify
from tests.conftest import run_cli


def oem_file_offset(img: Path, rel: str) -> int:
    """Byte offset in the disk image of the first block of a file on the OEM partition
    (found by content: btrfs keeps file data in 4 KiB-aligned blocks)."""
    part = gpt.read(img).by_label("OEM")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "oem.img"
        gpt.copy_out(img, part, copy)
        head = fs.btrfs_read_file(copy, rel)[:4096]
        hits = []
        with open(copy, "rb") as f:
            for start, length in data_ranges(f.fileno()):
                for off in range(start - start % 4096, start + length, 4096):
                    if os.pread(f.fileno(), 4096, off) == head:
                        hits.append(off)
    assert len(hits) == 1, hits
    return part.offset + hits[0]


def test_verify_passes(mini_release):
    proc = verify(mini_release["out"], mini_release["cert"], check=True)
    checks = {c["check"]: c["ok"] for c in json.loads(proc.stdout)["checks"]}
    assert all(checks.values())
    assert {"release.json.p7s", "/usr verity", "sysext azure-base", "sysext aks-node",
            "ignition (azure)", "ignition (qemu)", "platform azure", "platform qemu",
            "output acl-test-1.0.0.vhd"} <= set(checks)  # fmt: skip


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        ("release.json", "release.json signature"),
        ("release.json.p7s", "release.json signature"),
        ("acl-test-1.0.0.qcow2", "acl-test-1.0.0.qcow2: sha256"),
        ("acl-test-1.0.0.vhd", "acl-test-1.0.0.vhd: sha256"),
        ("sysext", "sysext aks-node (/oem/extensions/aks-node/aks-node-1.0.0.raw): sha256"),
        ("usr", "/usr"),
        ("oem-sysext", "acl-test-1.0.0.vhd: OEM:/sysext/oem-azure-9999.2.0.raw sha256"),
    ],
)
def test_flipped_byte_fails_verify(mini_release, mini_flatcar, tmp_path, target, needle):
    out = tmp_path / "out"
    out.mkdir()
    for f in mini_release["out"].iterdir():
        copy_sparse(f, out / f.name)
    img = out / "acl-test-1.0.0.bin"
    if target == "sysext":
        flip(img, oem_file_offset(img, "extensions/aks-node/aks-node-1.0.0.raw") + 100)
    elif target == "usr":
        flip(img, gpt.read(img).by_label("USR-A").offset + 0x10000 + 3 * 4096 + 5)
    elif target == "oem-sysext":  # a byte of the OEM sysext's filesystem, in the Azure VHD
        vhd = out / "acl-test-1.0.0.vhd"
        sx = (mini_flatcar.path.parent / "oem-azure.raw").read_bytes()
        at = next(i for i in range(1 << 20, len(sx), 4096) if any(sx[i : i + 4096]))
        oem = gpt.read(vhd).by_label("OEM")
        with open(vhd, "rb") as f:
            f.seek(oem.offset)
            data = f.read(oem.size)
        found = data.find(sx[at : at + 4096])
        assert found > 0, "the OEM sysext's bytes are not stored plainly in the OEM partition"
        flip(vhd, oem.offset + found + 17)
    else:
        size = (out / target).stat().st_size
        flip(out / target, size - 10 if target.startswith("release.json") else size // 2)
    proc = verify(out, mini_release["cert"], check=False)
    assert proc.returncode == 1
    assert needle in proc.stderr, proc.stderr
    if target in ("sysext", "usr"):
        assert "acl-test-1.0.0.bin: sha256" in proc.stderr  # the image checksum too
    if target == "oem-sysext":
        assert "acl-test-1.0.0.vhd: sha256" in proc.stderr
        assert "platform qemu" not in proc.stderr  # the qemu outputs are intact


def test_verify_wrong_cert(mini_release, tmp_path):
    run_cli("keys", "generate", "-o", tmp_path / "other", check=True)
    proc = verify(mini_release["out"], tmp_path / "other" / "release.crt", check=False)
    assert "release.json signature" in proc.stderr
    assert "sysext azure-base" in proc.stderr  # signed by a key the consumer does not trust


@pytest.mark.integration
def test_testbed_flipped_sysext_byte_fails_verify(composed_release):
    img = composed_release.raw
    off = oem_file_offset(img, "extensions/azure-base/azure-base-1.1.0.raw") + 4096
    flip(img, off)
    try:
        proc = verify(composed_release.out_dir, composed_release.cert, check=False)
    finally:
        flip(img, off)  # the session fixture is shared: restore it
    assert (
        "sysext azure-base (/oem/extensions/azure-base/azure-base-1.1.0.raw): sha256" in proc.stderr
    )
    assert f"{img.name}: sha256" in proc.stderr
