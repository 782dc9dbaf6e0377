"""sysext check: accepts the product's bundles and refuses, with a reason, what
systemd-sysext would not merge (base mismatch, names, signature, verity, symlinks)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.image import gpt
from acl_compose.sysext import ddi
from tests.conftest import run_cli
from tests.sysext.conftest import BASE, BUNDLES


def test_check_accepts_bundles(built: dict, keys: dict, base: Path) -> None:
    images = [built[n]["runs"][0]["path"] for n in BUNDLES] + [built["aks-node"]["raw"]["path"]]
    proc = run_cli("sysext", "check", *images, "--base", base, "--cert", keys["cert"], check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == len(images) and all(line.endswith(": ok") for line in lines), proc.stdout
    proc = run_cli("--json", "sysext", "check", images[0], "--base", base, check=True)
    (res,) = json.loads(proc.stdout)
    assert res["ok"] and res["signed"] and res["kind"] == "ddi"
    assert res["extension_release"]["SYSEXT_ID"] == "azure-base"


def _check_one(image: Path, base_text: str, tmp_path: Path, cert: Path | None) -> str:
    b = tmp_path / "base-os-release"
    b.write_text(base_text)
    args = ["sysext", "check", image, "--base", b] + (["--cert", cert] if cert else [])
    proc = run_cli(*args, check=False)
    assert proc.returncode == 1
    (line,) = proc.stdout.splitlines()
    return line


@pytest.mark.parametrize(
    ("base_text", "expect"),
    [
        ("ID=fedora\nSYSEXT_LEVEL=1.0\n", "ID=flatcar does not match the base's ID=fedora"),
        (
            "ID=flatcar\nSYSEXT_LEVEL=2.0\n",
            "SYSEXT_LEVEL=1.0 does not match the base's SYSEXT_LEVEL=2.0",
        ),
        (
            "ID=flatcar\nSYSEXT_LEVEL=1.0\nARCHITECTURE=arm64\n",
            "ARCHITECTURE=x86-64 does not match",
        ),
    ],
    ids=["wrong-id", "wrong-sysext-level", "wrong-architecture"],
)
def test_check_rejects_base_mismatch(
    built: dict, keys: dict, tmp_path: Path, base_text: str, expect: str
) -> None:
    image = Path(built["azure-base"]["runs"][0]["path"])
    assert expect in _check_one(image, base_text, tmp_path, keys["cert"])


def test_check_rejects_wrong_file_name(built: dict, keys: dict, tmp_path: Path) -> None:
    image = tmp_path / "azure.raw"
    shutil.copyfile(built["azure-base"]["runs"][0]["path"], image)
    line = _check_one(image, BASE, tmp_path, keys["cert"])
    assert "file name azure.raw does not match the image's extension-release.azure-base" in line


def test_check_rejects_bad_signature(built: dict, keys: dict, tmp_path: Path) -> None:
    image = tmp_path / "azure-base.raw"
    shutil.copyfile(built["azure-base"]["runs"][0]["path"], image)
    sig = ddi.read(image).sig
    with open(image, "r+b") as f:
        f.seek(sig.offset)
        doc = json.loads(f.read(sig.size).rstrip(b"\0"))
        der = bytearray(base64.b64decode(doc["signature"]))
        der[-10] ^= 0x01  # inside the RSA signature value
        doc["signature"] = base64.b64encode(bytes(der)).decode()
        f.seek(sig.offset)
        f.write(json.dumps(doc, separators=(",", ":")).encode().ljust(sig.size, b"\0"))
    line = _check_one(image, BASE, tmp_path, keys["cert"])
    assert "signature does not verify with the given certificate" in line


def test_check_rejects_unknown_certificate(built: dict, keys: dict, tmp_path: Path) -> None:
    image = Path(built["azure-base"]["runs"][0]["path"])
    line = _check_one(image, BASE, tmp_path, keys["other_cert"])
    assert "not the given certificate" in line
    # raw images carry no fingerprint: the signature check itself refuses the other cert
    raw = Path(built["aks-node"]["raw"]["path"])
    line = _check_one(raw, BASE, tmp_path, keys["other_cert"])
    assert "signature does not verify with the given certificate" in line


def test_check_rejects_misnamed_side_files(built: dict, keys: dict, tmp_path: Path) -> None:
    src = Path(built["aks-node"]["raw"]["path"]).parent
    d = tmp_path / "ext"
    shutil.copytree(src, d)
    os.rename(d / "aks-node.roothash", d / "aks-node.raw.roothash")
    line = _check_one(d / "aks-node.raw", BASE, tmp_path, keys["cert"])
    assert "side file aks-node.raw.roothash is misnamed: systemd reads aks-node.roothash" in line


def test_check_rejects_tampered_data(built: dict, keys: dict, tmp_path: Path) -> None:
    image = tmp_path / "azure-base.raw"
    shutil.copyfile(built["azure-base"]["runs"][0]["path"], image)
    part = gpt.read(image).by_number(1)
    with open(image, "r+b") as f:
        f.seek(part.offset + 4096 + 7)
        b = f.read(1)
        f.seek(part.offset + 4096 + 7)
        f.write(bytes([b[0] ^ 0x55]))
    assert "dm-verity check failed" in _check_one(image, BASE, tmp_path, keys["cert"])


def test_check_unprotected_raw_and_not_an_extension(tmp_path: Path, base: Path) -> None:
    """A bare filesystem without side files passes with a note; one without
    extension-release fails; a non-.raw name fails."""
    tree = tmp_path / "tree"
    er = tree / "usr/lib/extension-release.d"
    er.mkdir(parents=True)
    (er / "extension-release.plain").write_text("ID=flatcar\nSYSEXT_LEVEL=1.0\n")
    subprocess.run(["mkfs.erofs", "--quiet", tmp_path / "plain.raw", tree], check=True)
    (res,) = sysext.check([tmp_path / "plain.raw"], base)
    assert res.ok and "no dm-verity protection" in res.notes
    shutil.rmtree(er)
    (tree / "usr/share").mkdir()
    subprocess.run(["mkfs.erofs", "--quiet", tmp_path / "empty.raw", tree], check=True)
    (res,) = sysext.check([tmp_path / "empty.raw"], base)
    assert not res.ok and "not a system extension" in res.reason
    os.rename(tmp_path / "plain.raw", tmp_path / "plain.img")
    (res,) = sysext.check([tmp_path / "plain.img"], base)
    assert not res.ok and "must end in .raw" in res.reason


def test_check_does_not_follow_image_symlinks_to_host(tmp_path: Path, base: Path) -> None:
    """An image whose usr/lib points at the host's /etc is not an extension (no host read)."""
    host = tmp_path / "host/extension-release.d"
    host.mkdir(parents=True)
    (host / "extension-release.evil").write_text("ID=flatcar\nSYSEXT_LEVEL=1.0\n")
    tree = tmp_path / "tree"
    (tree / "usr").mkdir(parents=True)
    os.symlink(tmp_path / "host", tree / "usr/lib")
    subprocess.run(["mkfs.erofs", "--quiet", tmp_path / "evil.raw", tree], check=True)
    (res,) = sysext.check([tmp_path / "evil.raw"], base)
    assert not res.ok and "not a system extension" in res.reason
