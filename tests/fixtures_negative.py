"""Session fixtures for negative proofs: one known-bad composed image, booted once.

- `negative_release`: the testbed composed through the normal pipeline into a release that
  `acl-compose verify` accepts, but which is bad three ways at boot:
  1. its OEM `grub.cfg` appends kernel arguments that mount USR-A directly, without dm-verity
     (the OEM partition is not covered by verity; Flatcar's GRUB sources that file);
  2. it carries the `pkgmgr-canary` sysext (tests/data/sysext), which ships `/usr/bin/pip3` and
     `/usr/bin/dpkg` (its bundle sets `allow_package_manager`, the policy refuses them otherwise);
  3. (with the user config of `negative_run`) user `acl-qa` of the baked QA config gets uid
     1601 instead of the declared 1600.
  It has neither the `container-runtime` nor the `aks-node` sysext (azure-base and the canary
  only): "a composed image without the runtime bundle", so every container test is red too.
  Ignition: the product's configs plus tests/data/boot/qa-ignition.yaml.
- `negative_run`: `acl-compose test` of that image with every qemu-test, once per session
  (one boot). Tests assert on its JUnit: add a qemu-test and assert here that it goes red on
  this image, instead of booting another bad image.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acl_compose.image import fs, gpt
from tests.fixtures_compose import REPO, write_manifest

DATA = REPO / "tests" / "data"
QA_IGNITION = DATA / "boot" / "qa-ignition.yaml"
WRONG_UID = DATA / "boot" / "wrong-uid.yaml"
CANARY = DATA / "sysext" / "pkgmgr-canary"


@dataclass
class NegativeRelease:
    out_dir: Path
    raw: Path
    release_json: Path
    release: dict
    cert: Path  # the release certificate (acl-compose verify --cert)
    grub_cfg: str  # the OEM grub.cfg it boots with


def unverified_usr_grub_cfg(base_cfg: str, usr_partuuid: str) -> str:
    """OEM grub.cfg that makes the kernel mount USR-A itself: the verity arguments emptied
    (the initrd then opens no dm-verity device) and mount.usr= pointed at the partition. The
    kernel and systemd take the last of repeated arguments, and linux_append comes last."""
    append = f"verity.usr= verity.usrhash= mount.usr=PARTUUID={usr_partuuid.lower()}"
    return (
        base_cfg.rstrip("\n")
        + "\n# acl-compose negative proof: /usr from USR-A directly, without dm-verity\n"
        + f'set linux_append="$linux_append {append}"\n'
    )


@pytest.fixture(scope="session")
def negative_release(
    testbed_image: Path,
    release_key: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> NegativeRelease:
    from acl_compose.compose import platform
    from acl_compose.image.sparse import copy_sparse
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("negative")
    base = d / "flatcar_production_image.bin"
    copy_sparse(testbed_image, base)
    disk = gpt.read(base)
    oem = d / "oem.img"
    gpt.copy_out(base, disk.by_label("OEM"), oem)
    current = (fs.btrfs_read_file(oem, "grub.cfg") or b"").decode()
    oem.unlink()
    grub_cfg = unverified_usr_grub_cfg(current, disk.by_label("USR-A").guid)
    work = d / "work"
    work.mkdir()
    platform.apply(base, disk, {"grub.cfg": grub_cfg.encode()}, work, None)  # compose's OEM edit
    key, cert = release_key
    manifest = write_manifest(
        d / "manifest.yaml",
        base={"path": base},
        key=key,
        cert=cert,
        name="acl-negative",
        sysexts=[REPO / "sysext" / "azure-base", CANARY],
        ignition=[REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml",
                  QA_IGNITION],
        outputs=("raw",),
    )  # fmt: skip
    out = d / "out"
    cache = tmp_path_factory.getbasetemp() / "compose-cache"
    run_cli("--cache-dir", cache, "compose", manifest, "-o", out, check=True)
    base.unlink()  # 3.5 GiB sparse; the composed copy is all that is booted
    release = json.loads((out / "release.json").read_text())
    raw = out / next(o["file"] for o in release["outputs"] if o["format"] == "raw")
    # compose keeps a base OEM that already is the platform's; if it ever rewrites grub.cfg,
    # this image would boot with verity after all: say so here, not as a puzzling green test.
    gpt.copy_out(raw, gpt.read(raw).by_label("OEM"), oem)
    composed = (fs.btrfs_read_file(oem, "grub.cfg") or b"").decode()
    oem.unlink()
    assert composed == grub_cfg, f"compose replaced the tampered OEM grub.cfg:\n{composed}"
    return NegativeRelease(out, raw, out / "release.json", release, cert, grub_cfg)


@dataclass
class NegativeRun:
    returncode: int
    stdout: str
    stderr: str
    junit: Path
    cases: dict[str, ET.Element] = field(default_factory=dict)  # "test_x[ssh://vm]" -> case

    def case(self, name: str) -> ET.Element:
        """A qemu-test's JUnit case by name, with or without testinfra's `[ssh://vm]`."""
        return self.cases[name] if name in self.cases else self.cases[f"{name}[ssh://vm]"]

    def status(self, name: str) -> str:
        """passed, failure, error or skipped."""
        case = self.case(name)
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                return tag
        return "passed"

    def message(self, name: str) -> str:
        return ET.tostring(self.case(name), encoding="unicode")


@pytest.fixture(scope="session")
def negative_run(
    negative_release: NegativeRelease, tmp_path_factory: pytest.TempPathFactory
) -> NegativeRun:
    """Every qemu-test against the negative image, one boot (`--ignition` sets the wrong uid)."""
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("negative-run")
    junit = d / "junit.xml"
    proc = run_cli(
        "--cache-dir", d / "cache", "--json", "test", negative_release.raw,
        "--release-json", negative_release.release_json, "--ignition", WRONG_UID,
        "--junit-xml", junit,
    )  # fmt: skip
    assert junit.is_file(), f"no JUnit written (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    cases = {c.get("name", ""): c for c in ET.parse(junit).getroot().iter("testcase")}
    return NegativeRun(proc.returncode, proc.stdout, proc.stderr, junit, cases)
