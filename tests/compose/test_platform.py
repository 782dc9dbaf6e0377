"""Platform outputs: the .bin/.qcow2 are the qemu platform's, the .vhd Azure's, differing only
in the OEM partition, which holds each platform's content as Flatcar lays it out."""

from __future__ import annotations

from pathlib import Path

from acl_compose.image import fs, gpt
from tests.vhd_tools import assert_azure_fixed_vhd


def _oem_tree(img: Path, dest: Path) -> Path:
    part = dest.with_suffix(".img")
    gpt.copy_out(img, gpt.read(img).by_label("OEM"), part)
    fs.btrfs_restore(part, dest)
    return dest


def test_platform_outputs_differ_only_in_oem(mini_release, mini_flatcar, tmp_path):
    """The .bin/.qcow2 are the qemu platform's, the .vhd Azure's: the same bytes everywhere
    but the OEM partition, which holds each platform's content (read with btrfs restore)."""
    out, rel = mini_release["out"], mini_release["release"]
    assert [(o["file"], o["platform"]) for o in rel["outputs"]] == [
        ("acl-test-1.0.0.bin", "qemu"), ("acl-test-1.0.0.qcow2", "qemu"),
        ("acl-test-1.0.0.vhd", "azure"),
    ]  # fmt: skip
    bin_, vhd = out / "acl-test-1.0.0.bin", out / "acl-test-1.0.0.vhd"
    assert_azure_fixed_vhd(vhd)  # what Azure takes, read by an independent footer parser
    oem = gpt.read(bin_).by_label("OEM")
    with open(bin_, "rb") as a, open(vhd, "rb") as b:
        for start, end in ((0, oem.offset), (oem.offset + oem.size, bin_.stat().st_size)):
            a.seek(start)
            b.seek(start)
            left = end - start
            while left:
                n = min(left, 1 << 22)
                assert a.read(n) == b.read(n), f"outside OEM at {start}"
                left -= n
    azure = _oem_tree(vhd, tmp_path / "azure")
    qemu = _oem_tree(bin_, tmp_path / "qemu")
    assert sorted(p.name for p in (azure / "sysext").iterdir()) == [
        "active-oem-azure", "oem-azure-9999.2.0.raw"]  # fmt: skip
    assert sorted(p.name for p in (qemu / "sysext").iterdir()) == [
        "active-oem-qemu", "oem-qemu-9999.2.0.raw"]  # fmt: skip
    grub = (azure / "grub.cfg").read_text()
    assert 'set oem_id="azure"' in grub and "console=ttyS0,115200n8" in grub
    assert "terminal_output serial" in grub
    assert 'set oem_id="qemu"' in (qemu / "grub.cfg").read_text()
    # oem-release from the sysext's release fields (SYSEXT_VERSION_ID is the bundle's 1.2.3).
    assert (azure / "oem-release").read_text() == (
        'ID=azure\nVERSION_ID=1.2.3\nNAME="Microsoft Azure"\n'
        "HOME_URL=https://azure.microsoft.com/\nBUG_REPORT_URL=https://issues.flatcar.org\n"
    )
    for tree in (azure, qemu):  # the baked config is in every platform's OEM
        assert (tree / "base" / "base.ign").read_bytes() == (
            qemu / "base" / "base.ign"
        ).read_bytes()
    p = rel["platforms"]["azure"]
    assert p["id"] == "azure" and p["grub_oem_id"] == "azure"
    assert p["source"] == "oem-azure.raw beside the base image"
    assert p["sysext"]["path"] == "OEM:/sysext/oem-azure-9999.2.0.raw"
    assert p["sysext"]["sha256"] == __import__("hashlib").sha256(
        (azure / "sysext" / "oem-azure-9999.2.0.raw").read_bytes()).hexdigest()  # fmt: skip
    assert (
        p["sysext"]["signed"] is False
        and p["sysext"]["extension_release"]["VERSION_ID"] == "9999.2.0"
    )
    assert rel["platforms"]["qemu"]["oem_release"]["ID"] == "qemu"
