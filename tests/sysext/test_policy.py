"""Bundle schema errors (file:line) and every sysext policy rule, each tripped for real."""

from __future__ import annotations

import importlib.util
import os
import re
import stat
import sys
import textwrap
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.errors import InputError, PolicyError
from acl_compose.sysext.bundle import load_bundle
from acl_compose.sysext.policy import check_tree
from tests.conftest import REPO, run_cli

QEMU_IMMUTABLE = REPO / "qemu-tests" / "test_immutable.py"


def _bundle(tmp_path: Path, body: str, files: dict[str, str] | None = None) -> Path:
    d = tmp_path / "bundle"
    d.mkdir(exist_ok=True)
    (d / "sysext.yaml").write_text("name: t\nversion: '1'\n" + textwrap.dedent(body))
    for rel, text in (files or {}).items():
        p = d / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return d


def _build(bundle: Path, tmp_path: Path, cache_dir: Path) -> dict:
    return sysext.build(bundle, tmp_path / "out", cache_dir=cache_dir)


def _policy_error(bundle: Path, tmp_path: Path, cache_dir: Path) -> str:
    with pytest.raises(PolicyError) as e:
        _build(bundle, tmp_path, cache_dir)
    assert not (tmp_path / "out").exists()  # nothing half-written, not even the directory
    return e.value.message


# ---------------------------------------------------------------- schema
def test_unknown_key_names_file_and_line(tmp_path: Path) -> None:
    b = _bundle(tmp_path, "description: x\nfilesytem: erofs\n")
    with pytest.raises(InputError) as e:
        load_bundle(b)
    assert e.value.message == f"{b}/sysext.yaml:4: unknown key 'filesytem'"


def test_unknown_key_in_file_entry(tmp_path: Path) -> None:
    b = _bundle(tmp_path, "files:\n  - path: /usr/a\n    inline: x\n    owner: root\n")
    with pytest.raises(InputError, match=r"sysext\.yaml:6: unknown key 'owner' in files entry"):
        load_bundle(b)


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        (
            "files:\n  - path: /usr/a\n    inline: x\n    mode: rwx\n",
            r":6:11: mode: rwx is not a number; write a mode like 0644",
        ),
        (
            "files:\n  - path: /usr/a\n    inline: x\n    from: files/a\n",
            r":4: .* needs exactly one of",
        ),
        ("files:\n  - path: usr/a\n    inline: x\n", r":4: path 'usr/a' must be absolute"),
        ("files:\n  - path: /usr/../etc/a\n    inline: x\n", r":4: path .* is not normalized"),
        ("files:\n  - path: /usr/a\n    from: ../../etc/passwd\n", r"outside the bundle directory"),
        ("files:\n  - path: /usr/a\n    url: http://x/a\n", r":4: url entry /usr/a needs sha256"),
        ("architecture: sparc\n", r":3: architecture must be one of"),
        ("filesystem: erofs\ncompression: xz\n", r":4: compression for erofs must be one of"),
        ("units: [nope.service]\n", r"unit nope.service is enabled but .* is not in files"),
        (
            "x: !!python/object/apply:os.system ['true']\n",
            r"invalid YAML|could not determine a constructor",
        ),
    ],
    ids=[
        "mode",
        "two-sources",
        "relative",
        "dotdot",
        "from-outside",
        "url-sha",
        "arch",
        "compression",
        "unit",
        "unsafe-yaml",
    ],
)
def test_schema_errors(tmp_path: Path, cache_dir: Path, body: str, expect: str) -> None:
    b = _bundle(tmp_path, body)
    with pytest.raises(InputError, match=expect):
        _build(b, tmp_path, cache_dir)


def test_cli_reports_file_line_and_hint(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(tmp_path, "colour: blue\n")
    proc = run_cli(
        "--cache-dir", cache_dir, "sysext", "build", b, "-o", tmp_path / "out", check=False
    )
    assert proc.returncode == 1
    assert f"error: {b}/sysext.yaml:3: unknown key 'colour'" in proc.stderr
    assert "hint: known keys:" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_modes_and_versions_by_the_one_yaml_rule(tmp_path: Path, capfd) -> None:
    """Butane's rule, as in Ignition YAML: modes are unquoted integers as written (0755 octal,
    755 decimal with a warning); versions and names are text (an unquoted 1.10 is refused,
    never read as 1.1)."""
    b = _bundle(tmp_path, "files:\n  - path: /usr/bin/a\n    inline: x\n    mode: 0755\n"
                "  - path: /usr/bin/b\n    inline: x\n    mode: 0o750\n")  # fmt: skip
    bundle = load_bundle(b)
    assert [f.mode for f in bundle.files] == [0o755, 0o750] and bundle.version == "1"
    b = _bundle(tmp_path, "files:\n  - path: /usr/bin/a\n    inline: x\n    mode: 644\n")
    assert load_bundle(b).files[0].mode == 644  # as written: decimal
    assert (
        "sysext.yaml:6:11: mode 644 is decimal (octal 01204); write 0644" in capfd.readouterr().err
    )
    for mode, problem in [
        ("'0644'", "'0644' is quoted: write the number without quotes, e.g. mode: 0644"),
        ("0999", "0999 is not an octal number (digits 0-7 after the 0)"),
        (
            "4755",
            "4755 is out of range (0 to 07777 octal, 4095); for octal permissions write 04755",
        ),
    ]:
        b = _bundle(tmp_path, f"files:\n  - path: /usr/bin/a\n    inline: x\n    mode: {mode}\n")
        with pytest.raises(InputError) as e:
            load_bundle(b)
        assert e.value.message.endswith(f"sysext.yaml:6:11: mode: {problem}"), e.value.message
    good = (b / "sysext.yaml").read_text().replace("mode: 4755", "mode: 0644")
    for key, value in [
        ("version", "1.10"),
        ("version", "2"),
        ("name", "7"),
        ("sysext_level", "1.0"),
    ]:
        text = re.sub(rf"(?m)^{key}:.*$", f"{key}: {value}", good)
        if f"{key}: " not in text:
            text += f"{key}: {value}\n"
        (b / "sysext.yaml").write_text(text)
        with pytest.raises(InputError) as e:
            load_bundle(b)
        assert f"{key}: {value} is a number" in e.value.message
        assert e.value.message.endswith(f'not text: quote it, {key}: "{value}"')
        assert re.search(r"sysext\.yaml:\d+:\d+: ", e.value.message)


# ---------------------------------------------------------------- policy rules
def test_policy_path_outside_usr_and_opt(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(tmp_path, "files:\n  - path: /etc/motd\n    inline: hi\n")
    msg = _policy_error(b, tmp_path, cache_dir)
    assert msg.endswith(
        "sysext.yaml:4: /etc/motd: outside /usr and /opt (systemd-sysext ignores it)"
    )


def test_policy_opt_is_allowed(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(tmp_path, "files:\n  - path: /opt/tool/README\n    inline: hi\n")
    assert _build(b, tmp_path, cache_dir)["name"] == "t"


@pytest.mark.parametrize("path", ["/usr/lib/os-release", "/usr/share/defaults/os-release"])
def test_policy_os_release(tmp_path: Path, cache_dir: Path, path: str) -> None:
    b = _bundle(tmp_path, f"files:\n  - path: {path}\n    inline: ID=evil\n")
    assert f"{path}: an extension must not ship os-release" in _policy_error(b, tmp_path, cache_dir)


@pytest.mark.parametrize(
    ("target", "expect"),
    [
        ("../../../../etc/shadow", "resolves outside the image"),
        ("/etc/passwd", "resolves to /etc/passwd, outside /usr and /opt"),
        ("../../../var/lib/x", "resolves to /var/lib/x, outside /usr and /opt"),
    ],
)
def test_policy_symlink_escaping(tmp_path: Path, cache_dir: Path, target: str, expect: str) -> None:
    b = _bundle(tmp_path, f"files:\n  - path: /usr/lib/t/link\n    symlink: {target}\n")
    assert f"/usr/lib/t/link: symlink to {target} {expect}" in _policy_error(b, tmp_path, cache_dir)


def test_policy_symlink_from_source_tree(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(
        tmp_path, "files:\n  - path: /usr/share/t\n    from: files/t\n", {"files/t/ok": "x"}
    )
    os.symlink("../../../../root/.ssh/id_rsa", b / "files/t/key")
    os.symlink("ok", b / "files/t/fine")  # inside the image: allowed
    msg = _policy_error(b, tmp_path, cache_dir)
    assert "/usr/share/t/key: symlink to ../../../../root/.ssh/id_rsa resolves outside" in msg
    assert "(+" not in msg  # the inside link is not a violation


def test_policy_device_node(tmp_path: Path, cache_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    b = _bundle(tmp_path, "files:\n  - path: /usr/share/t\n    from: files/t\n", {"files/t/a": "x"})
    os.mknod(b / "files/t/null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    assert "/usr/share/t/null: device node" in _policy_error(b, tmp_path, cache_dir)


def test_policy_fifo(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(tmp_path, "files:\n  - path: /usr/share/t\n    from: files/t\n", {"files/t/a": "x"})
    os.mkfifo(b / "files/t/pipe")
    assert "/usr/share/t/pipe: FIFO or socket" in _policy_error(b, tmp_path, cache_dir)


def test_policy_setuid_mode(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(tmp_path, "files:\n  - path: /usr/bin/su2\n    inline: x\n    mode: 04755\n")
    assert "/usr/bin/su2: setuid bit set (mode 4755)" in _policy_error(b, tmp_path, cache_dir)


def test_policy_setgid_in_source(tmp_path: Path, cache_dir: Path) -> None:
    b = _bundle(
        tmp_path, "files:\n  - path: /usr/bin/tool\n    from: files/tool\n", {"files/tool": "x"}
    )
    os.chmod(b / "files/tool", 0o2755)
    assert "/usr/bin/tool: setgid bit set (mode 2755)" in _policy_error(b, tmp_path, cache_dir)


@pytest.mark.parametrize(
    "path",
    [
        "/usr/bin/dpkg",
        "/usr/bin/apt-get",
        "/usr/sbin/rpm",
        "/opt/bin/pacman",
        "/usr/local/bin/flatpak",
        "/usr/bin/pip3",
        "/opt/bin/opkg",
        "/usr/bin/rpm-ostree",
        "/usr/sbin/xbps-install",
    ],
)
def test_policy_package_manager(tmp_path: Path, cache_dir: Path, path: str) -> None:
    b = _bundle(tmp_path, f"files:\n  - path: {path}\n    inline: '#!/bin/sh'\n    mode: 0755\n")
    name = path.rsplit("/", 1)[1]
    msg = _policy_error(b, tmp_path, cache_dir)
    assert f"sysext.yaml:4: {path}: package manager '{name}' is not allowed" in msg


@pytest.mark.parametrize(
    "db", ["var/lib/dpkg", "var/lib/rpm", "usr/lib/sysimage/rpm", "var/db/pkg"]
)
def test_policy_package_database(tmp_path: Path, cache_dir: Path, db: str) -> None:
    b = _bundle(tmp_path, f"files:\n  - path: /{db}/status\n    inline: x\n")
    assert f"/{db}: package database /{db}" in _policy_error(b, tmp_path, cache_dir)


@pytest.mark.parametrize(
    "module",
    [
        "usr/lib/python3.11/ensurepip",
        "usr/lib/python3/dist-packages/pip",
        "opt/venv/lib/python3.12/site-packages/pip-24.0.dist-info",
    ],
)
def test_policy_python_installer_module(tmp_path: Path, cache_dir: Path, module: str) -> None:
    b = _bundle(tmp_path, f"files:\n  - path: /{module}/__init__.py\n    inline: x\n")
    name = module.rsplit("/", 1)[1]
    assert f"/{module}: Python installer '{name}'" in _policy_error(b, tmp_path, cache_dir)


def test_policy_covers_what_the_booted_host_is_checked_for() -> None:
    """Every command the qemu-tests look for on a booted host is refused at build time."""
    from acl_compose.sysext import policy

    spec = importlib.util.spec_from_file_location("qt_immutable", QEMU_IMMUTABLE)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = module  # type: ignore[union-attr] (its dataclasses look it up)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    finally:
        del sys.modules[spec.name]  # type: ignore[union-attr]
    assert set(module.PACKAGE_MANAGERS) <= policy.PACKAGE_MANAGERS
    assert set(module.PYTHON_MODULES) <= set(policy.PYTHON_INSTALLERS)
    booted = {d.lstrip("/") for d in module.PACKAGE_DATABASES}
    assert booted <= set(policy.PACKAGE_DATABASES)


def test_allow_package_manager_lets_it_through(tmp_path: Path, cache_dir: Path) -> None:
    body = "allow_package_manager: testing\nfiles:\n  - path: /usr/bin/dpkg\n    inline: x\n"
    body += "    mode: 0755\n"
    result = _build(_bundle(tmp_path, body), tmp_path, cache_dir)
    assert Path(result["path"]).is_file()
    # ... but not the other rules
    body2 = body.replace("0755", "06755")
    with pytest.raises(PolicyError, match="setuid"):
        _build(_bundle(tmp_path, body2), tmp_path, cache_dir)


def test_empty_allow_reason_refused(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="allow_package_manager must be a non-empty reason"):
        load_bundle(_bundle(tmp_path, "allow_package_manager: ''\n"))


def test_check_tree_lists_every_violation(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    (root / "usr/bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "usr/bin/yum").write_text("x")
    (root / "usr/share/completions").mkdir(parents=True)
    (root / "usr/share/completions/apt").write_text("complete -F _apt apt")  # not a command
    (root / "usr/libexec").mkdir()
    (root / "usr/libexec/zypper").write_text("x")
    os.chmod(root / "usr/libexec/zypper", 0o755)
    (root / "usr/bin/ok").write_text("x")
    os.chmod(root / "usr/bin/ok", 0o4755)
    rules = sorted(v.rule for v in check_tree(root))
    assert rules == ["outside", "package-manager", "package-manager", "setuid"]
    assert sorted(v.rule for v in check_tree(root, allow_package_manager=True)) == [
        "outside",
        "setuid",
    ]
