"""Assembling a bundle's tree: normalized modes, enabled units, entries that collide, and a
refused tree that leaves nothing behind although mkfs already ran on it."""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.errors import InputError, PolicyError
from tests.conftest import REPO
from tests.ddi_tools import extract


def _bundle(tmp_path: Path, body: str, files: dict[str, str]) -> Path:
    d = tmp_path / "bundle"
    d.mkdir()
    (d / "sysext.yaml").write_text("name: t\nversion: '1'\n" + textwrap.dedent(body))
    for rel, text in files.items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def test_units_enabled_and_tree_normalized(tmp_path: Path, cache_dir: Path) -> None:
    """`units:` become .wants links; modes are normalized and owners are root in the image."""
    result = sysext.build(REPO / "sysext" / "azure-base", tmp_path / "out", cache_dir=cache_dir)
    data = extract(Path(result["path"]), 1, tmp_path / "fs")
    dest = tmp_path / "x"
    subprocess.run(["fsck.erofs", f"--extract={dest}", data], check=True, capture_output=True)
    link = dest / "usr/lib/systemd/system/multi-user.target.wants/azure-base-info.service"
    assert os.readlink(link) == "../azure-base-info.service"
    script = dest / "usr/libexec/azure-base/record-provides"
    assert (script.stat().st_mode & 0o7777) == 0o755
    assert (dest / "usr/lib/sysctl.d/60-azure-net.conf").stat().st_mode & 0o7777 == 0o644
    assert script.stat().st_uid == 0 and script.stat().st_mtime == 0  # mkfs -T0
    er = (dest / "usr/lib/extension-release.d/extension-release.azure-base").read_text()
    assert "EXTENSION_RELOAD_MANAGER=1" in er and "SYSEXT_LEVEL=1.0" in er


@pytest.mark.parametrize("filesystem", ["erofs", "squashfs"])
def test_reproducible_regardless_of_umask_mtime_and_order(tmp_path: Path, filesystem: str) -> None:
    """A copy made with umask 077, odd mtimes, reverse creation order builds the same bytes."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "sysext" / "aks-node", src)
    manifest = src / "sysext.yaml"
    manifest.write_text(manifest.read_text() + f"filesystem: {filesystem}\n")
    copy = tmp_path / "copy"
    old = os.umask(0o077)
    try:
        for p in sorted(src.rglob("*"), reverse=True):
            if p.is_file():
                t = copy / p.relative_to(src)
                t.parent.mkdir(parents=True, exist_ok=True)
                t.write_bytes(p.read_bytes())
                os.utime(t, (12345, 67890))
    finally:
        os.umask(old)
    assert (copy / "files/60-aks-node.conf").stat().st_mode & 0o777 == 0o600
    a = sysext.build(src, tmp_path / "a", cache_dir=tmp_path / "ca")
    b = sysext.build(copy, tmp_path / "b", cache_dir=tmp_path / "cb")
    assert a["sha256"] == b["sha256"]
    # the build hard-links or copies bundle files but never touches them
    assert (copy / "files/60-aks-node.conf").stat().st_mtime == 67890


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_entry_provided_twice_names_the_line(tmp_path: Path, cache_dir: Path, kind: str) -> None:
    """Two `from:` trees that both carry usr/bin/tool: the second one's line is named, and
    the first one's file is not overwritten (nothing is built)."""
    files = {"a/usr/bin/tool": "one\n"}
    if kind == "file":
        files["b/usr/bin/tool"] = "two\n"
    b = _bundle(
        tmp_path,
        "files:\n  - path: /usr\n    from: a/usr\n  - path: /usr\n    from: b/usr\n",
        files,
    )
    if kind == "symlink":
        (b / "b/usr/bin").mkdir(parents=True)
        os.symlink("other", b / "b/usr/bin/tool")
    with pytest.raises(InputError) as e:
        sysext.build(b, tmp_path / "out", cache_dir=cache_dir)
    assert e.value.message.endswith("sysext.yaml:6: /usr/bin/tool is provided twice")
    assert (b / "a/usr/bin/tool").read_text() == "one\n"
    assert not (tmp_path / "out").exists()


def test_refused_tree_leaves_no_scratch(tmp_path: Path, cache_dir: Path) -> None:
    """The policy check runs beside mkfs: a refusal still waits for it and removes its work."""
    big = "x" * (1 << 20)
    files = {f"t/usr/share/big/{i}": big for i in range(40)} | {"t/usr/bin/dnf": "#!/bin/sh\n"}
    b = _bundle(tmp_path, "files:\n  - path: /usr\n    from: t/usr\n", files)
    os.chmod(b / "t/usr/bin/dnf", 0o755)
    with pytest.raises(PolicyError, match="package manager 'dnf'"):
        sysext.build(b, tmp_path / "out", cache_dir=cache_dir)
    assert not (tmp_path / "out").exists()
    leftovers = [p.name for p in (cache_dir / "sysext").iterdir() if p.name != "memo"]
    assert leftovers == []
