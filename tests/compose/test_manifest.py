"""The compose manifest: schema, located errors, relative paths, env expansion."""

from __future__ import annotations

from pathlib import Path

import pytest

from acl_compose.compose import manifest
from acl_compose.errors import InputError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "release.key").write_text("k")
    (tmp_path / "keys" / "release.crt").write_text("c")
    bundle = tmp_path / "bundles" / "hello"
    bundle.mkdir(parents=True)
    (bundle / "sysext.yaml").write_text('name: hello\nversion: "1"\n')
    (tmp_path / "ign").mkdir()
    (tmp_path / "ign" / "base.yaml").write_text("variant: flatcar\nversion: 1.0.0\n")
    (tmp_path / "prebuilt.raw").write_bytes(b"x")
    (tmp_path / "base.bin").write_bytes(b"x")
    return tmp_path


GOOD = """\
name: acl
version: 1.2.3
base:
  channel: stable
  release: "4081.2.0"
  board: amd64-usr
  base_url: ${ACL_TEST_BASE_URL:-http://127.0.0.1:1/}
  trusted_key: "f88c fede ff29 a5b4 d952 3864 e25d 9aed 0593 b34a"
sysexts:
  - bundles/hello
  - prebuilt.raw
ignition: [ign/base.yaml]
signing:
  key: keys/release.key
  cert: keys/release.crt
outputs: [raw, vhd]
"""


def write(tree: Path, text: str, name: str = "m.yaml") -> Path:
    p = tree / name
    p.write_text(text)
    return p


def test_good_manifest_resolves_paths_against_its_folder(tree, monkeypatch):
    monkeypatch.chdir("/")
    m = manifest.load_manifest(write(tree, GOOD))
    assert m.name == "acl" and m.version == "1.2.3" and m.stem == "acl-1.2.3"
    assert m.sysexts == [tree / "bundles" / "hello", tree / "prebuilt.raw"]
    assert m.ignition == [tree / "ign" / "base.yaml"]
    assert m.signing.key == tree / "keys" / "release.key"
    assert m.base.release == "4081.2.0" and m.base.base_url == "http://127.0.0.1:1/"
    assert m.base.trusted_key == "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"
    # A format alone takes its default platform: raw -> qemu, vhd -> azure.
    assert m.outputs == [manifest.Output("raw", "qemu"), manifest.Output("vhd", "azure")]
    assert m.platforms == ["qemu", "azure"]


def test_outputs_with_platforms(tree):
    text = GOOD.replace(
        "outputs: [raw, vhd]",
        "outputs:\n  - {format: vhd, platform: azure}\n  - {format: qcow2, platform: qemu}\n"
        "  - format: raw\n    platform: azure\n  - qcow2\n  - {format: vhd}",
    )
    m = manifest.load_manifest(write(tree, text))
    # Duplicates collapse (qcow2 is qcow2/qemu, {format: vhd} is vhd/azure); order is kept.
    assert [str(o) for o in m.outputs] == ["vhd:azure", "qcow2:qemu", "raw:azure"]
    assert m.platforms == ["azure", "qemu"]


@pytest.mark.parametrize(
    ("outputs", "line", "needle"),
    [
        ("[{format: vhd, platform: aws}]", 16, "outputs[0].platform: unknown platform 'aws'"),
        ("[raw, {format: iso}]", 16, "outputs[1].format: unknown format 'iso'"),
        ("[{platform: azure}]", 16, "outputs[0].format: required key missing"),
        ("\n  - format: raw\n    platfrom: qemu", 18, "outputs[0].platfrom: unknown key"),
        ("[]", 16, "outputs: expected a non-empty list"),
        ("[[raw]]", 16, "outputs[0]: unknown format ['raw']"),
    ],
)
def test_output_errors_are_located(tree, outputs, line, needle):
    path = write(tree, GOOD.replace("outputs: [raw, vhd]", f"outputs: {outputs}"))
    with pytest.raises(InputError) as e:
        manifest.load_manifest(path)
    assert e.value.message.startswith(f"{path}:{line}: "), e.value.message
    assert needle in e.value.message


def test_env_expansion_and_overrides(tree, monkeypatch):
    monkeypatch.setenv("ACL_TEST_BASE_URL", "http://127.0.0.1:9/board/")
    m = manifest.load_manifest(write(tree, GOOD))
    assert m.base.base_url == "http://127.0.0.1:9/board/"
    m = manifest.load_manifest(write(tree, GOOD), {"base_url": "http://x/", "trusted_key": "ab cd"})
    assert m.base.base_url == "http://x/" and m.base.trusted_key == "ABCD"


def test_local_base_path(tree):
    text = GOOD.replace("  channel: stable\n", "").replace('  release: "4081.2.0"\n', "")
    text = text.replace(
        "  base_url: ${ACL_TEST_BASE_URL:-http://127.0.0.1:1/}\n", "  path: base.bin\n"
    )
    m = manifest.load_manifest(write(tree, text))
    assert m.base.path == tree / "base.bin"


@pytest.mark.parametrize(
    ("edit", "line", "needle"),
    [
        (("outputs: [raw, vhd]", "outputs: [raw, vhd]\nextra: 1"), 17, "extra: unknown key"),
        (("  board: amd64-usr", "  board: amd64-usr\n  bord: x"), 7, "base.bord: unknown key"),
        (
            ("  key: keys/release.key", "  key: keys/nope.key"),
            14,
            "signing.key: 'keys/nope.key' does not exist",
        ),
        (("outputs: [raw, vhd]", "outputs: [raw, iso]"), 16, "outputs[1]: unknown format 'iso'"),
        (("  - prebuilt.raw", "  - missing.raw"), 11, "sysexts[1]: 'missing.raw' does not exist"),
        (("name: acl", "name: 'a b'"), 1, "name: 'a b' is not a valid name"),
        (("  channel: stable", "  channel: nightly"), 4, "base.channel: 'nightly'"),
        (
            ("${ACL_TEST_BASE_URL:-http://127.0.0.1:1/}", "${ACL_TEST_UNSET_VAR}"),
            7,
            "ACL_TEST_UNSET_VAR is not set",
        ),
        (("  - prebuilt.raw", "  - ign/base.yaml"), 11, "is not a .raw image"),
        (("ignition: [ign/base.yaml]", "ignition: [ign]"), 12, "ignition[0]:"),
    ],
)
def test_errors_name_file_and_line(tree, edit, line, needle, monkeypatch):
    monkeypatch.delenv("ACL_TEST_UNSET_VAR", raising=False)
    assert edit[0] in GOOD
    path = write(tree, GOOD.replace(edit[0], edit[1]))
    with pytest.raises(InputError) as e:
        manifest.load_manifest(path)
    assert e.value.message.startswith(f"{path}:{line}: "), e.value.message
    assert needle in e.value.message


def test_missing_required_and_bad_yaml(tree):
    p = write(tree, 'name: a\nversion: "1"\nbase: {path: base.bin}\n')
    with pytest.raises(InputError, match="signing: required key missing"):
        manifest.load_manifest(p)
    p = write(tree, "name: [\n")
    with pytest.raises(InputError, match=r"m.yaml:2:1: invalid YAML"):
        manifest.load_manifest(p)
    p = write(tree, "- a\n")
    with pytest.raises(InputError, match="expected a mapping"):
        manifest.load_manifest(p)


def test_path_and_url_conflict(tree):
    p = write(tree, GOOD.replace("  board: amd64-usr", "  board: amd64-usr\n  path: base.bin"))
    with pytest.raises(InputError, match="cannot be combined with base.path"):
        manifest.load_manifest(p)


def test_safe_loader_only(tree):
    p = write(tree, GOOD.replace("name: acl", "name: !!python/object/apply:os.system ['true']"))
    with pytest.raises(InputError):
        manifest.load_manifest(p)


def test_example_manifest_parses(tmp_path, monkeypatch):
    """examples/manifest.yaml, in a copy of the repo layout with a generated key."""
    repo = Path(__file__).resolve().parents[2]
    (tmp_path / "examples" / "keys").mkdir(parents=True)
    (tmp_path / "examples" / "manifest.yaml").write_text(
        (repo / "examples" / "manifest.yaml").read_text()
    )
    for name in ("release.key", "release.crt"):
        (tmp_path / "examples" / "keys" / name).write_text("x")
    for d in ("sysext", "ignition"):
        (tmp_path / d).symlink_to(repo / d)
    monkeypatch.setenv("ACL_KEYRING", str(tmp_path / "examples" / "manifest.yaml"))
    monkeypatch.setenv("ACL_TRUSTED_KEY", "ab cd")
    monkeypatch.delenv("ACL_BASE_URL", raising=False)
    m = manifest.load_manifest(tmp_path / "examples" / "manifest.yaml")
    assert [p.name for p in m.sysexts] == ["azure-base", "container-runtime", "aks-node"]
    assert [p.name for p in m.ignition] == ["base.yaml", "aks-node.yaml"]
    assert m.base.base_url == "http://127.0.0.1:8000/" and m.base.trusted_key == "ABCD"
    assert [str(o) for o in m.outputs] == ["raw:qemu", "qcow2:qemu"]


def test_override_skips_unset_env_in_manifest(tree, monkeypatch):
    monkeypatch.delenv("ACL_TEST_UNSET_VAR", raising=False)
    p = write(
        tree, GOOD.replace("${ACL_TEST_BASE_URL:-http://127.0.0.1:1/}", "${ACL_TEST_UNSET_VAR}")
    )
    m = manifest.load_manifest(p, {"base_url": "http://127.0.0.1:2/"})
    assert m.base.base_url == "http://127.0.0.1:2/"


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (("version: 1.2.3", "version: 0.10"), "2:10: version: 0.10 is a number (0.1) in YAML"),
        (("version: 1.2.3", "version: 2"), "2:10: version: 2 is a number in YAML"),
        (("name: acl", "name: 1.5"), "1:7: name: 1.5 is a number in YAML"),
        (('  release: "4081.2.0"', "  release: 4081.2"), "5:12: base.release: 4081.2 is a number"),
    ],
)
def test_versions_and_names_must_be_quoted_when_they_look_like_numbers(tree, edit, where):
    """`version: 0.10` used to become "0.1" silently."""
    path = write(tree, GOOD.replace(*edit))
    with pytest.raises(InputError) as e:
        manifest.load_manifest(path)
    assert e.value.message.startswith(f"{path}:{where}"), e.value.message
    assert e.value.message.endswith(f'quote it, {edit[1].split(":")[0].strip()}: '
                                    f'"{edit[1].split(": ")[1]}"')  # fmt: skip


def test_base_path_override_reads_no_remote_fields(tree, monkeypatch):
    """--base-path used to demand ACL_TRUSTED_KEY and ACL_KEYRING it would not use."""
    monkeypatch.delenv("ACL_TEST_UNSET_VAR", raising=False)
    text = GOOD.replace(
        '"f88c fede ff29 a5b4 d952 3864 e25d 9aed 0593 b34a"', "${ACL_TEST_UNSET_VAR}"
    )
    text = text.replace(
        "  board: amd64-usr\n", "  board: amd64-usr\n  keyring: ${ACL_TEST_UNSET_VAR}\n"
    )
    p = write(tree, text)
    with pytest.raises(InputError, match="ACL_TEST_UNSET_VAR is not set"):
        manifest.load_manifest(p)
    m = manifest.load_manifest(p, {"path": tree / "base.bin"})
    assert m.base.path == tree / "base.bin" and m.base.keyring is None
    assert m.base.trusted_key is None and m.base.board == "amd64-usr"


def test_missing_base_path_is_named_as_the_user_gave_it(tree, monkeypatch):
    monkeypatch.chdir(tree / "keys")
    with pytest.raises(InputError) as e:
        manifest.load_manifest(write(tree, GOOD), {"path": Path("nothere.bin")})
    assert e.value.message == (
        f"--base-path nothere.bin does not exist (resolved to {tree / 'keys' / 'nothere.bin'})"
    )
    assert "manifest" not in e.value.hint and "current folder" in e.value.hint
