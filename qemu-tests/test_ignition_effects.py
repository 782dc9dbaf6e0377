"""The baked Ignition config's settings are in force, not just written.

test_ignition.py checks that the config's files, units and links exist; this checks their
effect on the running system: every sysctl a sysctl.d file of the config sets has that value
in the kernel, every module a modules-load.d file lists is loaded, and every unit the config
enables is enabled. Expectations are re-rendered from the configs release.json records and
must hash to the baked config's sha256, so nothing here is a hard-coded list.
"""

from __future__ import annotations

import hashlib
import shlex
import tempfile
from pathlib import Path
from typing import Any

import pytest

from acl_compose import ignition


@pytest.fixture(scope="module")
def baked(image_path: Path | None, release: dict[str, Any] | None) -> dict[str, Any]:
    """The baked config: OEM base/base.ign read offline from the image, or else re-rendered
    from the sources release.json records (they must hash to the recorded sha256)."""
    info = (release or {}).get("ignition") or {}
    if image_path is not None:
        from acl_compose.compose import inspect
        from acl_compose.image import gpt

        with tempfile.TemporaryDirectory(prefix="acl-qemu-tests-") as tmp:
            with inspect.raw_view(image_path, Path(tmp)) as raw:
                oem = inspect.read_oem(raw, gpt.read(raw), Path(tmp))
        entry = oem["configs"].get("base/base.ign")
        if entry is None:
            pytest.skip("the image bakes no base Ignition config (OEM base/base.ign)")
        assert entry["config"] is not None, "OEM base/base.ign is not valid JSON"
        return entry["config"]
    sources = [Path(p) for p in info.get("sources", [])]
    if not sources or not all(p.is_file() for p in sources):
        pytest.skip("neither the image nor the Ignition sources in release.json are at hand")
    configs = [ignition.load(p, warnings=[]) for p in sources]
    config = ignition.merge(configs) if len(configs) > 1 else configs[0]
    if hashlib.sha256(ignition.dumps(config).encode()).hexdigest() != info.get("sha256"):
        pytest.skip("the Ignition sources changed since compose (sha256 differs)")
    return config


def config_lines(baked: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """(path, line) for the meaningful lines of the config's data-URL files under prefix."""
    out = []
    for f in baked.get("storage", {}).get("files", []):
        if not (f["path"].startswith(prefix) and f["path"].endswith(".conf")):
            continue
        try:
            text = ignition.resource_bytes(f["contents"]).decode()
        except (KeyError, ValueError):
            continue  # not a data URL: content unknown here
        out += [
            (f["path"], ln.strip())
            for ln in text.splitlines()
            if ln.strip() and ln.strip()[0] not in "#;"
        ]
    return out


def test_sysctls_in_force(host: Any, baked: dict[str, Any]) -> None:
    lines = config_lines(baked, "/etc/sysctl.d/")
    if not lines:
        pytest.skip("the baked config has no sysctl.d file")
    problems, checked = [], 0
    for path, line in lines:
        key, _, want = (p.strip() for p in line.lstrip("-").partition("="))
        # /proc/sys directly: sysctl(8) may be missing or off core's PATH
        proc = host.file("/proc/sys/" + (key if "/" in key else key.replace(".", "/")))
        if not proc.exists:
            continue  # a key this guest kernel does not have
        checked += 1
        got = proc.content_string
        if got.split() != want.split():
            problems.append(f"{key} = {got.strip()!r}, but {path} sets {want!r}")
    assert checked, "none of the config's sysctl keys exists in the guest kernel"
    assert not problems, "\n".join(problems)


def test_modules_loaded(host: Any, baked: dict[str, Any]) -> None:
    lines = config_lines(baked, "/etc/modules-load.d/")
    if not lines:
        pytest.skip("the baked config has no modules-load.d file")
    missing = [
        f"{module} ({path})"
        for path, module in lines
        if not host.file(f"/sys/module/{module.replace('-', '_')}").exists
    ]
    assert not missing, f"modules not loaded: {missing}"


def test_enabled_units_enabled(host: Any, baked: dict[str, Any]) -> None:
    units = [u for u in baked.get("systemd", {}).get("units", []) if u.get("enabled")]
    if not units:
        pytest.skip("the baked config enables no unit")
    states = {
        u["name"]: host.run(f"systemctl is-enabled {shlex.quote(u['name'])}").stdout.strip()
        for u in units
    }
    wrong = {name: state for name, state in states.items() if state != "enabled"}
    assert not wrong, f"enabled in the config but not in the guest: {wrong}"
