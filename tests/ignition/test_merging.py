"""Ignition's merge rules, and the product's own configs in ignition/."""

from __future__ import annotations

import pytest

from acl_compose import ignition
from tests.ignition.common import (
    HAVE_IGNITION_VALIDATE,
    PRODUCT,
    ignition_validate,
    resources,
    schema_validate,
)

# --- merge ----------------------------------------------------------------------------------


def test_merge_follows_ignition_rules():
    parent = {
        "ignition": {"version": "3.3.0"},
        "storage": {
            "files": [
                {
                    "path": "/a",
                    "mode": 0o600,
                    "contents": {"source": "data:;base64,H4s=", "compression": "gzip"},
                },
                {"path": "/becomes-dir", "contents": {"source": "data:,x"}},
                {"path": "/log", "append": [{"source": "data:,1"}]},
            ],
            "links": [{"path": "/l", "target": "/a"}],
        },
        "systemd": {
            "units": [
                {
                    "name": "a.service",
                    "enabled": True,
                    "dropins": [{"name": "10.conf", "contents": "[Service]\nA=1\n"}],
                }
            ]
        },
        "passwd": {"users": [{"name": "u", "sshAuthorizedKeys": ["k1", "k2"]}]},
        "kernelArguments": {"shouldExist": ["quiet", "a=1"]},
    }
    child = {
        "ignition": {"version": "3.4.0"},
        "storage": {
            "files": [
                {"path": "/a", "contents": {"source": "data:,new", "compression": ""}},
                {"path": "/log", "append": [{"source": "data:,2"}]},
                {"path": "/new", "contents": {"source": "data:,n"}},
            ],
            "directories": [{"path": "/becomes-dir"}],
        },
        "systemd": {
            "units": [
                {
                    "name": "a.service",
                    "enabled": False,
                    "dropins": [
                        {"name": "10.conf", "contents": "[Service]\nA=2\n"},
                        {"name": "20.conf", "contents": "[Service]\nB=1\n"},
                    ],
                },
                {"name": "b.service", "mask": True},
            ]
        },
        "passwd": {"users": [{"name": "u", "sshAuthorizedKeys": ["k2", "k3"]}]},
        "kernelArguments": {"shouldNotExist": ["quiet"]},
    }
    assert ignition.merge([parent, child]) == {
        "ignition": {"version": "3.4.0"},  # the child's version
        "storage": {
            "files": [
                # merged in place: the child's contents (compression "" clears gzip), parent's mode
                {
                    "path": "/a",
                    "mode": 0o600,
                    "contents": {"source": "data:,new", "compression": ""},
                },
                # /becomes-dir left the files: the child made it a directory
                {"path": "/log", "append": [{"source": "data:,1"}, {"source": "data:,2"}]},
                {"path": "/new", "contents": {"source": "data:,n"}},
            ],
            "directories": [{"path": "/becomes-dir"}],
            "links": [{"path": "/l", "target": "/a"}],
        },
        "systemd": {
            "units": [
                {
                    "name": "a.service",
                    "enabled": False,
                    "dropins": [
                        {"name": "10.conf", "contents": "[Service]\nA=2\n"},
                        {"name": "20.conf", "contents": "[Service]\nB=1\n"},
                    ],
                },
                {"name": "b.service", "mask": True},
            ]
        },
        "passwd": {"users": [{"name": "u", "sshAuthorizedKeys": ["k1", "k2", "k3"]}]},
        # an argument the child wants absent leaves the parent's shouldExist
        "kernelArguments": {"shouldExist": ["a=1"], "shouldNotExist": ["quiet"]},
    }


def test_merge_three_and_later_wins():
    mk = [
        {
            "ignition": {"version": "3.3.0"},
            "storage": {"files": [{"path": "/x", "contents": {"source": f"data:,{i}"}}]},
        }
        for i in range(3)
    ]
    merged = ignition.merge(mk)
    assert merged["storage"]["files"] == [{"path": "/x", "contents": {"source": "data:,2"}}]


def test_merged_product_configs_are_valid(tmp_path, reference):
    configs = [ignition.render(p, warnings=[]) for p in PRODUCT]
    merged = ignition.merge(configs)
    assert ignition.validate(merged) == []
    schema_validate(merged, reference)
    if HAVE_IGNITION_VALIDATE:
        proc = ignition_validate(merged, tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    paths = {f["path"] for f in merged["storage"]["files"]}
    assert {
        "/etc/flatcar/update.conf",
        "/etc/modules-load.d/aks.conf",
    } <= paths
    # containerd's AKS configuration lives in the aks-node sysext, not in /etc.
    assert "/etc/containerd/config.toml" not in paths
    dropins = {d["name"] for u in merged["systemd"]["units"] for d in u.get("dropins", [])}
    assert dropins == {"10-acl-restart.conf"}


# --- the product's configs ------------------------------------------------------------------


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: p.name)
def test_product_config_renders_offline_to_3_3_0(path, tmp_path, reference):
    warnings: list[str] = []
    config = ignition.render(path, warnings=warnings)
    assert warnings == []
    assert config["ignition"]["version"] == "3.3.0"
    schema_validate(config, reference)
    if HAVE_IGNITION_VALIDATE:
        proc = ignition_validate(config, tmp_path)
        assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr
    for _, res in resources(config):
        assert res["source"].startswith("data:")  # no network needed at first boot
    assert "users" not in config.get("passwd", {})  # the boot harness owns user `core`
    for unit in config.get("systemd", {}).get("units", []):  # nothing kernel-args related
        assert "kernelArguments" not in config, unit


def test_base_config_content():
    config = ignition.render(PRODUCT[0], warnings=[])
    files = {f["path"]: ignition.resource_bytes(f["contents"]) for f in config["storage"]["files"]}
    assert b"REBOOT_STRATEGY=off" in files["/etc/flatcar/update.conf"]
    sysctl = files["/etc/sysctl.d/90-acl-container-host.conf"].decode()
    for key in ("fs.inotify.max_user_watches", "net.ipv4.ip_forward = 1", "vm.max_map_count"):
        assert key in sysctl
    assert b"SystemMaxUse=" in files["/etc/systemd/journald.conf.d/10-acl-limits.conf"]
