"""Writes Flatcar cannot do (/usr) or that shadow the OEM and the baked base config are refused
with their key path; writes a ROOT reset would lose are warned about."""

from __future__ import annotations

import json

import pytest

from acl_compose import ignition
from acl_compose.ignition import flatcar
from acl_compose.ignition.locate import IgnitionError
from tests.ignition.common import HEADER, PRODUCT


def render_errors(tmp_path, body: str) -> list[str]:
    src = tmp_path / "cfg.yaml"
    src.write_text(HEADER + body)
    with pytest.raises(IgnitionError) as exc:
        ignition.render(src, warnings=[])
    return [e.removeprefix(f"{src}:") for e in exc.value.errors]


def render_warnings(tmp_path, body: str) -> list[str]:
    src = tmp_path / "cfg.yaml"
    src.write_text(HEADER + body)
    warnings: list[str] = []
    ignition.render(src, warnings=warnings)
    return [w.removeprefix(f"{src}:") for w in warnings]


REFUSED = [
    # (kind, path, the prefix whose rule applies)
    ("files", "/usr/bin/evil", "/usr is read-only on Flatcar (dm-verity)"),
    ("files", "/usr", "/usr is read-only"),
    ("directories", "/usr/local/bin", "/usr is read-only"),
    ("links", "/usr/lib/systemd/system/x.service", "/usr is read-only"),
    ("files", "/usr/lib/ignition/base.d/evil.ign", "/usr/lib/ignition holds the baked base"),
    ("files", "/usr/share/oem/config.ign", "/usr/share/oem is where older Flatcar mounts"),
    ("files", "/oem/base/base.ign", "/oem is the OEM partition"),
    ("directories", "/oem", "/oem is the OEM partition"),
    ("links", "/oem/sysext/active-oem-azure", "/oem is the OEM partition"),
    ("files", "/bin/evil", "/bin links to /usr/bin on Flatcar, and /usr is read-only"),
    ("files", "/sbin/evil", "/sbin links to /usr/sbin on Flatcar"),
    ("directories", "/lib/modules-load.d", "/lib links to /usr/lib on Flatcar"),
    ("files", "/lib64/ld.so", "/lib64 links to /usr/lib64 on Flatcar"),
]


@pytest.mark.parametrize("kind,path,why", REFUSED, ids=[r[1] for r in REFUSED])
def test_writes_under_usr_and_oem_are_refused_with_their_key_path(tmp_path, kind, path, why):
    extra = "      target: /etc/hostname\n" if kind == "links" else ""
    body = f"storage:\n  {kind}:\n    - path: /etc/ok\n{extra}    - path: {path}\n{extra}"
    errors = render_errors(tmp_path, body)
    line = 7 if kind == "links" else 6
    assert len(errors) == 1
    assert errors[0].startswith(f"{line}:7: storage.{kind}[1].path: cannot write {path}: {why}")


@pytest.mark.parametrize(
    "path",
    ["/usrx/a", "/oemx", "/etc/usr/a", "/opt/oem/a", "/var/usr", "/binary", "/library/a", "/"],
)
def test_lookalike_paths_are_not_refused(path):
    assert flatcar.refusal(path) is None


def test_json_configs_are_checked_too_and_every_refusal_is_listed(tmp_path):
    config = {
        "ignition": {"version": "3.3.0"},
        "storage": {
            "files": [{"path": "/etc/fine"}, {"path": "/usr/bin/evil"}],
            "directories": [{"path": "/oem/base"}],
        },
    }
    bad = tmp_path / "bad.ign"
    bad.write_text(json.dumps(config, indent=2))
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad, warnings=[])
    where = [e.split(": cannot write")[0] for e in exc.value.errors]
    assert where == [
        f"{bad}:11:9: storage.files[1].path",
        f"{bad}:16:9: storage.directories[0].path",
    ]


def test_mounts_over_usr_or_oem_are_refused(tmp_path):
    body = (
        "storage:\n  filesystems:\n    - device: /dev/sdb\n      format: ext4\n"
        "      path: /usr/local\n    - device: /dev/sdc\n      format: ext4\n      path: /var/mnt\n"
        "systemd:\n  units:\n"
        "    - name: oem.mount\n      mask: true\n"
        '    - name: usr-share-oem.mount\n      contents: "[Mount]\\nWhat=/dev/sdb\\n"\n'
        '    - name: var-mnt.mount\n      contents: "[Mount]\\nWhat=/dev/sdc\\n"\n'
        "    - name: oem.automount\n      enabled: true\n"  # enabling the image's own: fine
    )
    errors = render_errors(tmp_path, body)
    assert [e.split(": /")[0] for e in errors] == [
        "7:7: storage.filesystems[0].path: cannot mount at /usr/local",
        "13:7: systemd.units[0].name: cannot replace or mask the mount of /oem",
        "15:7: systemd.units[1].name: cannot replace or mask the mount of /usr/share/oem",
    ]


@pytest.mark.parametrize(
    "name,path",
    [
        ("oem.mount", "/oem"),
        ("usr-share-oem.mount", "/usr/share/oem"),
        ("var-lib-foo\\x2dbar.automount", "/var/lib/foo-bar"),
        ("-.mount", "/"),
        ("oem.service", None),
        ("mount", None),
    ],
)
def test_mount_unit_names_unescape_to_their_path(name, path):
    assert flatcar.unit_path(name) == path


# --- ROOT resets --------------------------------------------------------------------------------

LINK_TO_ROOT = "storage:\n  links:\n    - path: /etc/extensions/x.raw\n      target: {target}\n"
# What compose baked into ROOT before [flatcar-current] moved it to OEM + the base config:
# the rule is tested with it, since today's table is empty.
BAKED_BEFORE = (
    ("/opt/extensions", "the product's sysext images"),
    ("/etc/extensions", "the links that enable the product's sysexts"),
    ("/etc/verity.d", "the certificates that verify the product's sysexts"),
)


def test_link_to_what_compose_baked_into_root_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr(flatcar, "ROOT_BAKED", BAKED_BEFORE)
    warnings = render_warnings(tmp_path, LINK_TO_ROOT.format(target="/opt/extensions/x/x-1.raw"))
    assert len(warnings) == 1
    assert warnings[0].startswith(
        "6:7: storage.links[0].target: /opt/extensions/x/x-1.raw is on ROOT, where compose baked "
        "the product's sysext images: a ROOT reset"
    )
    # Relative targets resolve against the link's folder.
    warnings = render_warnings(tmp_path, LINK_TO_ROOT.format(target="../verity.d/x.crt"))
    assert "/etc/verity.d/x.crt is on ROOT" in warnings[0]


@pytest.mark.parametrize(
    "body",
    [
        LINK_TO_ROOT.format(target="/oem/sysext/x.raw"),  # survives a reset
        LINK_TO_ROOT.format(target="/var/lib/x.raw"),  # not something the product baked
        # The config writes the target itself, so a reset brings both back.
        LINK_TO_ROOT.format(target="/opt/extensions/x.raw")
        + "  files:\n    - path: /opt/extensions/x.raw\n",
    ],
    ids=["oem", "unbaked", "written-by-config"],
)
def test_links_a_reset_restores_are_not_warned_about(tmp_path, body, monkeypatch):
    monkeypatch.setattr(flatcar, "ROOT_BAKED", BAKED_BEFORE)
    assert render_warnings(tmp_path, body) == []


WIPE = "storage:\n  filesystems:\n    - device: {device}\n      format: ext4\n      wipe_filesystem: true\n"  # noqa: E501


def test_a_config_that_reformats_root_is_warned_about(tmp_path, monkeypatch):
    monkeypatch.setattr(flatcar, "ROOT_BAKED", BAKED_BEFORE)
    for device in ("/dev/disk/by-label/ROOT", "/dev/disk/by-partlabel/ROOT"):
        (w,) = render_warnings(tmp_path, WIPE.format(device=device))
        assert w.startswith("7:7: storage.filesystems[0].wipe_filesystem: reformats ROOT")
        assert "(/opt/extensions)" in w and "(/etc/verity.d)" in w
    assert render_warnings(tmp_path, WIPE.format(device="/dev/sdb")) == []


def test_the_reset_rule_follows_its_table(tmp_path, monkeypatch):
    # Compose stopped baking sysexts into ROOT ([flatcar-current]): the table shrank and the
    # warnings went with it; nothing else encodes the locations.
    monkeypatch.setattr(flatcar, "ROOT_BAKED", (("/etc/verity.d", "certificates"),))
    assert render_warnings(tmp_path, LINK_TO_ROOT.format(target="/opt/extensions/x.raw")) == []
    (w,) = render_warnings(tmp_path, WIPE.format(device="/dev/disk/by-label/ROOT"))
    assert w.endswith("loses what compose baked there: certificates (/etc/verity.d)")
    monkeypatch.setattr(flatcar, "ROOT_BAKED", ())
    assert render_warnings(tmp_path, WIPE.format(device="/dev/disk/by-label/ROOT")) == []


def test_compose_bakes_nothing_a_reset_loses(tmp_path):
    """Sysext images go to the OEM partition; their links and certificate are in the base
    config, which Ignition applies again after a reset: nothing for the table to list."""
    from acl_compose.compose import placement

    assert flatcar.ROOT_BAKED == ()
    assert placement.OEM_MOUNT == "/oem" and flatcar.baked(placement.OEM_MOUNT + "/x") is None
    assert render_warnings(tmp_path, WIPE.format(device="/dev/disk/by-label/ROOT")) == []


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: p.name)
def test_the_products_configs_pass_without_warnings(path):
    warnings: list[str] = []
    ignition.render(path, warnings=warnings)
    assert warnings == []


def test_cli_refuses_a_usr_write_with_its_key_path(cli, tmp_path):
    src = tmp_path / "evil.yaml"
    src.write_text(HEADER + "storage:\n  files:\n    - path: /usr/bin/evil\n      mode: 0755\n")
    for command in ("render", "validate"):
        proc = cli("ignition", command, src, check=False)
        assert proc.returncode == 1
        lines = proc.stderr.splitlines()
        want = f"error: {src}:5:7: storage.files[0].path: cannot write /usr/bin/evil: /usr is"
        assert lines[0].startswith(want), proc.stderr
        assert lines[1].startswith("hint: ") and proc.stdout == ""
