"""The baked base Ignition config took effect: its files, directories, links, units, users.

Expectations come from the config baked into the image (OEM `base/base.ign`, read offline from
the image on the host), checked against release.json's sha256 when one is given; nothing here
is a hard-coded list.
"""

from __future__ import annotations

import base64
import hashlib
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def baked_config(image_path: Path | None, release: dict[str, Any] | None) -> dict[str, Any]:
    """The image's OEM base/base.ign (parsed); skips when the image bakes none."""
    if image_path is None:
        pytest.skip("image path unknown: run via `acl-compose test` or `pytest --image`")
    from acl_compose.compose import inspect
    from acl_compose.image import gpt

    with tempfile.TemporaryDirectory(prefix="acl-qemu-tests-") as tmp:
        with inspect.raw_view(image_path, Path(tmp)) as raw:
            oem = inspect.read_oem(raw, gpt.read(raw), Path(tmp))
    entry = oem["configs"].get("base/base.ign")
    if entry is None:
        pytest.skip("the image bakes no base Ignition config (OEM base/base.ign)")
    expected = ((release or {}).get("ignition") or {}).get("sha256")
    if expected:
        assert entry["sha256"] == expected, "OEM base/base.ign differs from release.json"
    assert entry["config"] is not None, "OEM base/base.ign is not valid JSON"
    return entry["config"]


def _data_url(source: str) -> bytes | None:
    """Bytes of a `data:` URL (None for other schemes, which the guest fetched itself)."""
    if not source.startswith("data:"):
        return None
    meta, _, payload = source[5:].partition(",")
    if meta.endswith(";base64"):
        return base64.b64decode(payload)
    return urllib.parse.unquote_to_bytes(payload)


def _guest_sha256(host: Any, path: str) -> str:
    out = host.run("sudo -n sha256sum %s 2>/dev/null || sha256sum %s", path, path)
    return out.stdout.split()[0] if out.rc == 0 and out.stdout else ""


def test_files(host: Any, baked_config: dict[str, Any]) -> None:
    files = (baked_config.get("storage") or {}).get("files") or []
    if not files:
        pytest.skip("the baked config writes no files")
    for f in files:
        gf = host.file(f["path"])
        assert gf.exists and gf.is_file, f"{f['path']} missing"
        if "mode" in f:
            assert gf.mode == f["mode"], f"{f['path']}: mode {gf.mode:o} != {f['mode']:o}"
        contents = f.get("contents") or {}
        data = _data_url(contents.get("source", "")) if contents.get("source") else None
        if data is not None and not contents.get("compression") and not f.get("append"):
            want = hashlib.sha256(data).hexdigest()
            assert _guest_sha256(host, f["path"]) == want, f"{f['path']}: content differs"


def test_directories(host: Any, baked_config: dict[str, Any]) -> None:
    dirs = (baked_config.get("storage") or {}).get("directories") or []
    if not dirs:
        pytest.skip("the baked config makes no directories")
    for d in dirs:
        gd = host.file(d["path"])
        assert gd.is_directory, f"{d['path']} is not a directory"
        if "mode" in d:
            assert gd.mode == d["mode"], f"{d['path']}: mode {gd.mode:o} != {d['mode']:o}"
        group = (d.get("group") or {}).get("name")
        if group:
            assert gd.group == group, f"{d['path']}: group {gd.group} != {group}"


def test_links(host: Any, baked_config: dict[str, Any]) -> None:
    links = (baked_config.get("storage") or {}).get("links") or []
    if not links:
        pytest.skip("the baked config makes no links")
    for link in links:
        gl = host.file(link["path"])
        if link.get("hard"):
            assert gl.exists, f"{link['path']} missing"
            continue
        assert gl.is_symlink, f"{link['path']} is not a symlink"
        assert gl.linked_to == link["target"] or host.file(link["target"]).exists, link


def test_units(host: Any, baked_config: dict[str, Any]) -> None:
    units = (baked_config.get("systemd") or {}).get("units") or []
    if not units:
        pytest.skip("the baked config has no systemd units")
    base = "/etc/systemd/system"
    for u in units:
        name = u["name"]
        if u.get("mask"):
            assert host.file(f"{base}/{name}").linked_to == "/dev/null", f"{name} not masked"
        if u.get("contents") is not None:
            want = hashlib.sha256(u["contents"].encode()).hexdigest()
            assert _guest_sha256(host, f"{base}/{name}") == want, f"{name}: content differs"
        for drop in u.get("dropins") or []:
            path = f"{base}/{name}.d/{drop['name']}"
            assert host.file(path).exists, f"{path} missing"
            if drop.get("contents") is not None:
                want = hashlib.sha256(drop["contents"].encode()).hexdigest()
                assert _guest_sha256(host, path) == want, f"{path}: content differs"
        if u.get("enabled") is True:
            state = host.run("systemctl is-enabled %s", name).stdout.strip()
            assert state in ("enabled", "enabled-runtime", "static", "alias"), f"{name}: {state}"


def test_users_and_groups(host: Any, baked_config: dict[str, Any]) -> None:
    passwd = baked_config.get("passwd") or {}
    users, groups = passwd.get("users") or [], passwd.get("groups") or []
    if not users and not groups:
        pytest.skip("the baked config creates no users or groups")
    for g in groups:
        assert host.group(g["name"]).exists, f"group {g['name']} missing"
    for u in users:
        user = host.user(u["name"])
        assert user.exists, f"user {u['name']} missing"
        for g in u.get("groups") or []:
            assert g in user.groups, f"user {u['name']} not in group {g}"
