"""Each output platform's OEM content: kept from a base that already is that platform's (an
Azure image, a legacy OEM partition), refused when systemd-sysext would not merge it, and a
warning when a product sysext shadows it."""

from __future__ import annotations

import json
import os

from tests.compose.runs import compose, verify
from tests.fixtures_compose import CONFIGS, build_mini_flatcar, write_manifest


def test_azure_image_as_base_keeps_its_oem(mini_release, release_key, tmp_path):
    """A base that already is an Azure image (here the .vhd composed above, read as raw, as
    flatcar_production_azure_image.vhd would be) keeps its OEM content for azure outputs;
    a qemu output then needs oem-qemu.raw, and says where it looked."""
    key, cert = release_key
    base = tmp_path / "base"
    base.mkdir()
    os.link(mini_release["out"] / "acl-test-1.0.0.vhd", base / "azure.vhd")
    m = write_manifest(tmp_path / "m.yaml", base={"path": base / "azure.vhd"}, key=key,
                       cert=cert, outputs=("vhd",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    was = mini_release["release"]["platforms"]["azure"]
    now = rel["platforms"]["azure"]
    assert now["source"] == "base image"
    assert now["sysext"]["sha256"] == was["sysext"]["sha256"]
    assert now["oem_release"] == was["oem_release"]
    assert verify(tmp_path / "out", cert, check=True).returncode == 0
    m2 = write_manifest(tmp_path / "m2.yaml", base={"path": base / "azure.vhd"}, key=key,
                        cert=cert, outputs=("qcow2",))  # fmt: skip
    proc = compose(m2, tmp_path / "out2", tmp_path / "cache", check=False)
    assert proc.returncode == 1 and not (tmp_path / "out2").exists()
    assert "error: platform qemu: the base" in proc.stderr
    assert "(oem-release ID is azure, not qemu)" in proc.stderr
    assert "no oem-qemu.raw beside it" in proc.stderr


def test_oem_sysext_the_base_does_not_trust_is_refused(release_key, tmp_path):
    """A signed OEM sysext that no certificate of the base's /usr/lib/verity.d accepts would
    never be merged by systemd-sysext: compose refuses it before writing anything."""
    from tests.fixtures_compose import build_oem_sysext

    key, cert = release_key
    mini = build_mini_flatcar(tmp_path / "base" / "flatcar_production_image.bin",
                              tmp_path / "work", oem_platforms=("qemu",))  # fmt: skip
    build_oem_sysext(tmp_path / "base", tmp_path / "w2", "azure", "9999.2.0", key, cert)
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert,
                       outputs=("vhd",))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1 and not (tmp_path / "out").exists()
    assert "platform azure: oem-azure.raw is signed, but by no certificate the base trusts" in (
        proc.stderr
    )
    # Pinned to another OS version: systemd-sysext would refuse it too.
    (tmp_path / "base" / "oem-azure.raw").unlink()
    build_oem_sysext(tmp_path / "base", tmp_path / "w3", "azure", "1.2.3")
    proc = compose(m, tmp_path / "out", tmp_path / "cache", check=False)
    assert proc.returncode == 1
    assert "platform azure: oem-azure.raw would not be merged" in proc.stderr
    assert "VERSION_ID" in proc.stderr


def test_legacy_platform_oem_is_kept(release_key, tmp_path):
    """A base from before OEM sysexts (Flatcar < 3760) whose OEM partition is already the
    platform's (oem-release and grub.cfg say qemu) is kept as it is, and verify accepts it."""
    key, cert = release_key
    mini = build_mini_flatcar(tmp_path / "base" / "flatcar_production_image.bin",
                              tmp_path / "work", oem_platforms=(), legacy_oem="qemu")  # fmt: skip
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini.path}, key=key, cert=cert,
                       ignition=CONFIGS[:1], outputs=("raw",))  # fmt: skip
    rel = json.loads(compose(m, tmp_path / "out", tmp_path / "cache").stdout)
    p = rel["platforms"]["qemu"]
    assert p["sysext"] is None and p["source"].startswith("base image (OEM files without")
    assert p["oem_release"] == {"ID": "qemu", "VERSION_ID": "0.0.1"}
    checks = {
        c["check"]: c for c in json.loads(verify(tmp_path / "out", cert, True).stdout)["checks"]
    }
    assert checks["platform qemu"]["ok"] and "no OEM sysext" in checks["platform qemu"]["detail"]
    assert checks["ignition (qemu)"]["ok"]
    # An azure output of the same base has nowhere to get its OEM content from.
    m2 = write_manifest(tmp_path / "m2.yaml", base={"path": mini.path}, key=key, cert=cert,
                        outputs=("vhd",))  # fmt: skip
    proc = compose(m2, tmp_path / "out2", tmp_path / "cache", check=False)
    assert "error: platform azure: the base" in proc.stderr and "no oem-azure.raw" in proc.stderr


def test_compose_warns_when_a_product_sysext_shadows_the_oem(mini_flatcar, release_key, tmp_path):
    key, cert = release_key
    bundle = tmp_path / "shadow"
    bundle.mkdir()
    (bundle / "sysext.yaml").write_text(
        "name: shadow\nversion: '1'\nfiles:\n"
        "  - {path: /usr/share/oem-azure/README, inline: 'mine'}\n"  # the mini oem-azure's file
    )
    m = write_manifest(tmp_path / "m.yaml", base={"path": mini_flatcar.path}, key=key, cert=cert,
                       sysexts=[bundle], outputs=("raw", "vhd"))  # fmt: skip
    proc = compose(m, tmp_path / "out", tmp_path / "cache")
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning: platform")]
    assert warnings == [
        "warning: platform azure: /usr/share/oem-azure/README is in shadow.raw and "
        "oem-azure.raw: the merged /usr shows one of them, hiding the other"
    ]
