"""Ignition authoring: render, validate, merge, data URLs, and the product's configs.

Cross-checks: the vendored upstream JSON schemas (via jsonschema, read from the reference
data, not the package's copy), Debian's real `ignition-validate` on every 3.3.0 output, and
decoding every data URL back to the exact input bytes.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from acl_compose import ignition
from acl_compose.ignition_validate import IgnitionError, decode_data_url, json_positions
from tests.conftest import REPO, run_cli

DATA = REPO / "tests" / "data" / "ignition"
FILES = DATA / "files"
CORPUS = ["full", "replace", "trees", "v1_1"]
PRODUCT = [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]
HAVE_IGNITION_VALIDATE = shutil.which("ignition-validate") is not None


def render(name: str) -> dict[str, Any]:
    return ignition.render(DATA / f"{name}.yaml", FILES, warnings=[])


def ignition_validate(config: dict[str, Any], tmp_path: Path) -> subprocess.CompletedProcess:
    """Debian's ignition-validate (2.14: specs up to 3.3.0 and 3.4.0-experimental)."""
    if config["ignition"]["version"] == "3.4.0":
        # 2.14 predates 3.4.0 final; its 3.4.0-experimental is the same schema.
        config = json.loads(json.dumps(config))
        config["ignition"]["version"] = "3.4.0-experimental"
    path = tmp_path / "check.ign"
    path.write_text(ignition.dumps(config))
    return subprocess.run(["ignition-validate", str(path)], capture_output=True, text=True)


def schema_validate(config: dict[str, Any], reference: Path) -> None:
    version = config["ignition"]["version"]
    name = "v" + "_".join(version.split(".")[:2]) + ".json"
    schema = json.loads((reference / "ignition-schema" / name).read_text())
    jsonschema.Draft4Validator(schema).validate(config)


def resources(config: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every resource with a source: (label, resource)."""
    out = []
    ign = config["ignition"]
    for i, r in enumerate(ign.get("config", {}).get("merge", [])):
        out.append((f"merge[{i}]", r))
    if "replace" in ign.get("config", {}):
        out.append(("replace", ign["config"]["replace"]))
    for i, r in enumerate(ign.get("security", {}).get("tls", {}).get("certificateAuthorities", [])):
        out.append((f"ca[{i}]", r))
    for f in config.get("storage", {}).get("files", []):
        if "source" in f.get("contents", {}):
            out.append((f["path"], f["contents"]))
        for j, r in enumerate(f.get("append", [])):
            out.append((f"{f['path']}+{j}", r))
    return out


# --- the corpus -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_matches_hand_checked_output(name):
    expected_text = (DATA / "expected" / f"{name}.ign").read_text()
    expected = json.loads(expected_text)
    got = render(name)
    assert got == expected
    # key order too: compact output is byte-identical to the expected file, re-serialised
    assert ignition.dumps(got) == json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
    assert ignition.dumps(got, pretty=True) + "\n" == expected_text


@pytest.mark.parametrize("name", CORPUS)
def test_corpus_output_matches_upstream_schema(name, reference):
    schema_validate(render(name), reference)


@pytest.mark.skipif(not HAVE_IGNITION_VALIDATE, reason="Debian package ignition not installed")
@pytest.mark.parametrize("name", CORPUS)
def test_corpus_output_accepted_by_real_ignition(name, tmp_path):
    proc = ignition_validate(render(name), tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "error" not in proc.stdout + proc.stderr


def test_corpus_covers_every_feature():
    full = render("full")
    assert full["ignition"]["version"] == "3.3.0"
    assert render("v1_1")["ignition"]["version"] == "3.4.0"
    files = {f["path"]: f for f in full["storage"]["files"]}
    assert files["/etc/motd"]["overwrite"] is True and files["/etc/motd"]["mode"] == 0o644
    assert files["/etc/acl/remote.conf"]["user"] == {"id": 1500}
    assert files["/etc/acl/remote.conf"]["group"] == {"name": "metrics"}
    assert files["/etc/acl/remote.conf"]["contents"]["verification"]["hash"].startswith("sha256-")
    assert len(files["/etc/acl/log.conf"]["append"]) == 2
    assert full["storage"]["directories"][0]["mode"] == 0o750
    assert full["storage"]["links"][1] == {
        "path": "/etc/acl/motd-hard",
        "target": "/etc/motd",
        "hard": True,
    }
    units = {u["name"]: u for u in full["systemd"]["units"]}
    assert units["acl-hello.service"]["contents"] == (FILES / "units/acl-hello.service").read_text()
    assert units["docker.service"]["dropins"][0]["contents"] == "[Service]\nNice=5\n"
    assert units["locksmithd.service"] == {"name": "locksmithd.service", "mask": True}
    ops = full["passwd"]["users"][0]
    assert (
        ops["homeDir"] == "/home/ops" and ops["uid"] == 1500 and ops["groups"] == ["sudo", "docker"]
    )
    assert len(ops["sshAuthorizedKeys"]) == 3  # one inline + two from the local file
    assert full["passwd"]["users"][1]["noCreateHome"] is True
    assert full["passwd"]["groups"][0] == {"name": "metrics", "gid": 1600}
    assert full["kernelArguments"] == {
        "shouldExist": ["console=ttyS0,115200n8", "flatcar.autologin"],
        "shouldNotExist": ["quiet"],
    }
    assert [m.get("compression") for m in full["ignition"]["config"]["merge"]] == ["", "", None]
    assert "replace" in render("replace")["ignition"]["config"]
    trees = render("trees")
    tfiles = {f["path"]: f for f in trees["storage"]["files"]}
    assert tfiles["/opt/bin/acl-tool"]["mode"] == 0o750  # the explicit entry's mode wins
    assert tfiles["/etc/acl/tree.conf"]["mode"] == 0o644
    assert trees["storage"]["links"] == [
        {"path": "/etc/acl/localtime", "target": "../../usr/share/zoneinfo/UTC"}
    ]


def test_every_data_url_decodes_to_the_input_bytes():
    motd = (FILES / "motd").read_bytes()
    expected = {
        "merge[0]": b'{"ignition":{"version":"3.3.0"}}',
        "merge[1]": (FILES / "child.ign").read_bytes(),
        "/etc/motd": motd,
        "/etc/acl/hello.txt": "héllo wörld # 100% / ?&=+\n".encode(),
        "/opt/acl/blob.bin": (FILES / "blob.bin").read_bytes(),
        "/etc/hosts.d/cluster": (FILES / "hosts.txt").read_bytes(),
        "/etc/acl/verified.txt": b"verified\n",
        "/etc/acl/log.conf+0": b"level=info\n",
        "/etc/acl/log.conf+1": motd,
        "replace": (FILES / "child.ign").read_bytes(),
        "/opt/bin/acl-tool": (FILES / "tree/opt/bin/acl-tool").read_bytes(),
        "/etc/acl/tree.conf": b"tree file\n",
        "/opt/bin/suid-helper": b"#!/bin/sh\nexit 0\n",
    }
    seen, kinds = set(), set()
    for name in CORPUS:
        for label, res in resources(render(name)):
            if not res["source"].startswith("data:"):
                continue
            data = decode_data_url(res["source"])
            if res.get("compression") == "gzip":
                data = gzip.decompress(data)
                kinds.add("gzip")
            else:
                kinds.add("base64" if ";base64," in res["source"] else "percent")
            if label in expected:
                assert data == expected[label], label
                seen.add(label)
    assert seen == set(expected) - {"ca[0]"}
    assert kinds == {"percent", "base64", "gzip"}  # all three encodings exercised


# --- data URLs -------------------------------------------------------------------------------


def test_data_url_picks_the_shortest_encoding():
    text = b"[Service]\nNice=5\n"
    url, comp = ignition.data_url(text)
    assert url == "data:,%5BService%5D%0ANice%3D5%0A" and comp == ""
    blob = (FILES / "blob.bin").read_bytes()
    url, comp = ignition.data_url(blob)
    assert url == "data:;base64," + base64.b64encode(blob).decode() and comp == ""
    big = (FILES / "hosts.txt").read_bytes()
    url, comp = ignition.data_url(big)
    assert comp == "gzip" and len(url) < len(big) / 3
    assert ignition.data_url(b"") == ("data:,", "")
    # RFC 2396 unreserved characters stay readable, everything else is escaped
    assert ignition.data_url(b"abcdefghij-_.!~*'()/ %#?&+")[0] == (
        "data:,abcdefghij-_.!~*'()%2F%20%25%23%3F%26%2B"
    )
    # compress=False never gzips
    assert ignition.data_url(big, compress=False)[1] == ""


def test_data_url_gzip_is_deterministic():
    big = (FILES / "hosts.txt").read_bytes()
    first, second = ignition.data_url(big), ignition.data_url(big)
    assert first == second
    raw = base64.b64decode(first[0].split(",", 1)[1])
    assert raw[:2] == b"\x1f\x8b" and raw[4:8] == b"\0\0\0\0"  # gzip magic, mtime 0


def test_data_url_round_trips_arbitrary_bytes():
    rng = random.Random(6)
    samples = (
        [bytes([b]) for b in range(256)]
        + [rng.randbytes(n) for n in (1, 2, 3, 17, 100, 1000, 5000)]
        + [bytes(rng.choice(b"ab \n%") for _ in range(n)) for n in (10, 400, 4000)]
    )
    for data in samples:
        url, comp = ignition.data_url(data)
        assert ignition.resource_bytes({"source": url, "compression": comp}) == data
        # the choice equals a brute-force minimum over the three encodings (Butane's rule)
        pct = "," + "".join(
            chr(b)
            if chr(b).isascii() and (chr(b).isalnum() or chr(b) in "-_.!~*'()")
            else f"%{b:02X}"
            for b in data
        )
        b64 = ";base64," + base64.b64encode(data).decode()
        gz = ";base64," + base64.b64encode(gzip.compress(data, 9, mtime=0)).decode()
        best = pct if len(pct) <= len(b64) else b64
        if len(gz) + 4 < len(best):
            best = gz
        assert url == "data:" + best
        assert comp == ("gzip" if best is gz else "")


@pytest.mark.parametrize("url", ["data:,a%zz", "data:;base64,YQ=", "data:no-comma"])
def test_bad_data_urls_do_not_decode(url):
    with pytest.raises(ValueError):
        decode_data_url(url)


# --- invalid inputs: the precise located message ---------------------------------------------

HEADER = "variant: flatcar\nversion: 1.0.0\n"

INVALID_YAML = [
    # (body after the header, "line:col: key.path: message")
    (
        "storage:\n  files:\n    - path: /etc/a\n      mod: 0644\n",
        "6:7: storage.files[0].mod: unknown key 'mod'",
    ),
    (
        "passwd:\n  users:\n    - name: core\n      sshAuthorizedKeys: [k]\n",
        "6:7: passwd.users[0].sshAuthorizedKeys: unknown key 'sshAuthorizedKeys' (Ignition "
        "spelling; Butane YAML uses 'ssh_authorized_keys')",
    ),
    (
        "ignition:\n  version: 3.3.0\n",
        "4:3: ignition.version: ignition.version is set from the top-level `version:`",
    ),
    (
        "storage:\n  files:\n    - path: etc/a\n",
        "5:7: storage.files[0].path: path not absolute: 'etc/a'",
    ),
    (
        "storage:\n  files:\n    - path: /etc/../a\n",
        "5:7: storage.files[0].path: path is not fully simplified: '/etc/../a'",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n  directories:\n    - path: /etc/b\n"
        "  links:\n    - path: /etc/a\n      target: /x\n",
        "9:7: storage.links[0]: duplicate entry defined: path '/etc/a' is also storage.files[0]",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      mode: 010000\n",
        "6:7: storage.files[0].mode: illegal file mode 4096",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      mode: '0644'\n",
        "6:7: storage.files[0].mode: expected integer, got string",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n"
        "        source: data:;base64,YQ=\n",
        "7:9: storage.files[0].contents.source: data URL does not decode: illegal base64 data",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: data:,a%zz\n",
        "7:9: storage.files[0].contents.source: data URL does not decode: invalid percent-escape",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: data:,a\n"
        "        compression: gzip\n",
        "7:9: storage.files[0].contents.source: data URL does not decode: Not a gzipped file",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: https://x/a\n"
        "        verification:\n          hash: sha512-abc\n",
        "9:11: storage.files[0].contents.verification.hash: incorrect size for hash sum",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: https://x/a\n"
        "        verification:\n          hash: md5-abc\n",
        "9:11: storage.files[0].contents.verification.hash: unrecognized hash function 'md5'",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: https://x/a\n"
        "        verification:\n          hash: deadbeef\n",
        "9:11: storage.files[0].contents.verification.hash: malformed hash specifier",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        inline: a\n"
        "        verification:\n          hash: sha256-" + "0" * 64 + "\n",
        "9:11: storage.files[0].contents.verification.hash: hash does not match the contents "
        "(sha256-ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb)",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        source: ftp://x/a\n",
        "7:9: storage.files[0].contents.source: invalid url scheme 'ftp'",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        inline: a\n"
        "        local: motd\n",
        "8:9: storage.files[0].contents.local: only one of inline, local, source may be set",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        inline: a\n"
        "        compression: gzip\n",
        "8:9: storage.files[0].contents.compression: compression applies to source only",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        local: ../outside\n",
        "7:9: storage.files[0].contents.local: local path '../outside' escapes the files directory",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      contents:\n        local: missing\n",
        "7:9: storage.files[0].contents.local: cannot read local file 'missing': No such file",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      overwrite: true\n",
        "6:7: storage.files[0].overwrite: overwrite must be false if source is unspecified",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      user: {id: 1, name: core}\n",
        "6:7: storage.files[0].user: cannot set both id and name",
    ),
    (
        "storage:\n  files:\n    - mode: 0644\n",
        "5:7: storage.files[0]: missing required key 'path'",
    ),
    ("storage:\n  links:\n    - path: /etc/a\n", "5:7: storage.links[0]: link target is required"),
    (
        "systemd:\n  units:\n    - name: foo\n",
        "5:7: systemd.units[0].name: invalid systemd unit extension: 'foo'",
    ),
    (
        'systemd:\n  units:\n    - name: a.service\n      contents: "[Unit\\n"\n',
        "6:7: systemd.units[0].contents: invalid unit content: unable to find end of section",
    ),
    (
        "systemd:\n  units:\n    - name: a.service\n      dropins:\n        - name: x\n",
        "7:11: systemd.units[0].dropins[0].name: invalid systemd drop-in extension: 'x'",
    ),
    (
        "systemd:\n  units:\n    - name: a.service\n    - name: b.service\n    - name: a.service\n",
        "7:7: systemd.units[2]: duplicate entry defined: unit 'a.service' is also systemd.units[0]",
    ),
    (
        "systemd:\n  units:\n    - name: a.service\n      contents: x\n      contents_local: y\n",
        "7:7: systemd.units[0].contents_local: contents and contents_local are mutually exclusive",
    ),
    (
        "passwd:\n  users:\n    - name: a\n    - name: a\n",
        "6:7: passwd.users[1]: duplicate entry defined: user 'a' is also passwd.users[0]",
    ),
    (
        "kernel_arguments:\n  should_exist: [quiet]\n  should_not_exist: [quiet]\n",
        "5:22: kernel_arguments.should_not_exist[0]: duplicate entry defined: kernel argument "
        "'quiet' is also kernel_arguments.should_exist[0]",
    ),
    (
        "storage:\n  files:\n    - path: /etc/systemd/system/a.service\n"
        'systemd:\n  units:\n    - name: a.service\n      contents: "[Unit]\\n"\n',
        "5:7: storage.files[0].path: path conflicts with systemd unit or dropin",
    ),
    (
        "storage:\n  filesystems:\n    - device: /dev/sdb\n      format: ntfs\n",
        "6:7: storage.filesystems[0].format: invalid filesystem format 'ntfs'",
    ),
    ("storage:\n  files:\n    - path: /a\n      path: /b\n", "6:7: duplicate key 'path'"),
    ("storage:\n  files: [\n", "5:1: invalid YAML: expected the node content"),
    ("storage:\n  files: {path: /a}\n", "4:3: storage.files: expected array, got object"),
]


@pytest.mark.parametrize("body,expected", INVALID_YAML, ids=[e[1][:50] for e in INVALID_YAML])
def test_invalid_yaml_is_located(tmp_path, body, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(HEADER + body)
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, FILES, warnings=[])
    assert exc.value.errors[0].startswith(f"{bad}:{expected}"), exc.value.errors


@pytest.mark.parametrize(
    "head,expected",
    [
        ("variant: fcos\nversion: 1.0.0\n", "1:1: variant: variant must be 'flatcar'"),
        ("variant: flatcar\nversion: 1.2.0\n", "2:1: version: unsupported version '1.2.0'"),
        ("variant: flatcar\nversion: 3.3.0\n", "2:1: version: unsupported version '3.3.0'"),
    ],
)
def test_wrong_variant_or_version(tmp_path, head, expected):
    bad = tmp_path / "bad.yaml"
    bad.write_text(head)
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, warnings=[])
    assert exc.value.errors[0].startswith(f"{bad}:{expected}")


def test_local_needs_files_dir_and_refuses_symlink_escape(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER + "storage:\n  files:\n    - path: /a\n      contents:\n        local: link\n"
    )
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, warnings=[])
    assert exc.value.errors[0] == (
        f"{bad}:7:9: storage.files[0].contents.local: local paths "
        "need a files directory: pass --files-dir DIR"
    )
    files = tmp_path / "files"
    files.mkdir()
    (files / "link").symlink_to("/etc/hostname")
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, files, warnings=[])
    assert "escapes the files directory" in exc.value.errors[0]


def test_every_error_is_reported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER + "storage:\n  files:\n    - path: a\n    - path: /b\n      mode: 99999\n"
    )
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, warnings=[])
    assert [e.split(": ", 2)[1] for e in exc.value.errors] == [
        "storage.files[0].path",
        "storage.files[1].mode",
    ]


def test_warnings(tmp_path):
    cfg = tmp_path / "w.yaml"
    cfg.write_text(
        HEADER + "storage:\n  files:\n    - path: /etc/a\n      mode: 644\n"
        "systemd:\n  units:\n    - name: mystery.service\n      enabled: true\n"
        "    - name: docker.service\n      enabled: true\n"
        "    - name: systemd-resolved.service\n      enabled: true\n"
    )
    warnings: list[str] = []
    ignition.render(cfg, warnings=warnings)
    assert warnings[0] == (
        f"{cfg}:6:7: storage.files[0].mode: mode 644 is decimal (octal "
        "01204); write 0644 for octal permissions"
    )
    assert any(
        w.startswith(
            f"{cfg}:9:7: systemd.units[0]: unit 'mystery.service' is enabled but has no contents"
        )
        for w in warnings
    )
    assert not any("docker.service" in w or "systemd-resolved" in w for w in warnings)


# --- JSON input -------------------------------------------------------------------------------

INVALID_JSON = [
    # (storage.files[0] object, message); every one of these is also refused by Ignition itself
    ({"path": "etc/a"}, "storage.files[0].path: path not absolute"),
    ({"path": "/a", "mode": 4096}, "storage.files[0].mode: illegal file mode 4096"),
    (
        {"path": "/a", "contents": {"source": "data:,a%zz"}},
        "storage.files[0].contents.source: data URL does not decode",
    ),
    (
        {"path": "/a", "contents": {"source": "data:,a", "verification": {"hash": "sha512-00"}}},
        "storage.files[0].contents.verification.hash: incorrect size for hash sum",
    ),
    ({"path": "/a", "overwrite": True}, "storage.files[0].overwrite: overwrite must be false"),
    ({"path": "/a", "mode": "0644"}, "storage.files[0].mode: expected integer, got string"),
]


@pytest.mark.parametrize("entry,expected", INVALID_JSON, ids=[e[1][:40] for e in INVALID_JSON])
def test_invalid_json_is_located_and_real_ignition_agrees(tmp_path, entry, expected):
    config = {"ignition": {"version": "3.3.0"}, "storage": {"files": [entry]}}
    bad = tmp_path / "bad.ign"
    bad.write_text(json.dumps(config, indent=2))
    key = expected.split(":", 1)[0]
    line, col = json_positions(bad.read_text())[_keypath(key)]
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad, warnings=[])
    assert exc.value.errors[0].startswith(f"{bad}:{line}:{col}: {expected}")
    if HAVE_IGNITION_VALIDATE:
        assert ignition_validate(config, tmp_path).returncode == 1


def _keypath(dotted: str) -> tuple:
    out: list = []
    for part in dotted.replace("]", "").split("."):
        name, *idx = part.split("[")
        out.append(name)
        out += [int(i) for i in idx]
    return tuple(out)


def test_json_positions_are_exact(tmp_path):
    text = (
        '{\n  "ignition": {"version": "3.3.0"},\n  "storage": {\n    "files": [\n'
        '      {"path": "rel"}\n    ]\n  }\n}\n'
    )
    pos = json_positions(text)
    assert pos[("storage", "files", 0)] == (5, 7)
    assert pos[("storage", "files", 0, "path")] == (5, 8)
    bad = tmp_path / "x.ign"
    bad.write_text(text)
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad)
    assert exc.value.errors[0] == f"{bad}:5:8: storage.files[0].path: path not absolute: 'rel'"


@pytest.mark.parametrize(
    "config,expected",
    [
        (
            {"ignition": {"version": "3.3"}},
            "1:14: ignition.version: unsupported config version '3.3'",
        ),
        ({"ignition": {}}, "1:2: ignition: missing required key 'version' in ignition"),
        (
            {
                "ignition": {"version": "3.3.0"},
                "passwd": {"users": [{"name": "a", "ssh_authorized_keys": []}]},
            },
            "1:64: passwd.users[0].ssh_authorized_keys: unknown key 'ssh_authorized_keys' (Butane "
            "spelling; Ignition JSON uses 'sshAuthorizedKeys')",
        ),
        (
            {
                "ignition": {"version": "3.3.0"},
                "storage": {"luks": [{"name": "x", "discard": True}]},
            },
            "1:64: storage.luks[0].discard: unknown key 'discard'",
        ),  # 3.4.0-only key in 3.3.0
    ],
)
def test_invalid_json_versions_and_keys(tmp_path, config, expected):
    bad = tmp_path / "bad.ign"
    bad.write_text(json.dumps(config, separators=(",", ":")))
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad)
    assert exc.value.errors[0].startswith(f"{bad}:{expected}"), exc.value.errors


def test_broken_json_is_located(tmp_path):
    bad = tmp_path / "bad.ign"
    bad.write_text('{"ignition": {"version": "3.3.0"},\n  "storage": }')
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad)
    assert exc.value.errors[0] == f"{bad}:2:14: invalid JSON: Expecting value"


# Same verdict as Ignition itself, valid and invalid, for the rules easy to get subtly wrong.
AGREEMENT = {
    "trailing slash": {"storage": {"files": [{"path": "/etc/x/"}]}},
    "double slash": {"storage": {"files": [{"path": "//etc/x"}]}},
    "root directory": {"storage": {"directories": [{"path": "/"}]}},
    "space in data URL": {
        "storage": {"files": [{"path": "/a", "contents": {"source": "data:,hello world"}}]}
    },
    "hash sign in data URL": {
        "storage": {"files": [{"path": "/a", "contents": {"source": "data:,a#b"}}]}
    },
    "control char in URL": {
        "storage": {"files": [{"path": "/a", "contents": {"source": "data:,a\u0001"}}]}
    },
    "reserved chars in data URL": {
        "storage": {"files": [{"path": "/a", "contents": {"source": "data:,;/?:@&=+$,-_.!~*'()"}}]}
    },
    "media type": {
        "storage": {
            "files": [
                {"path": "/a", "contents": {"source": "data:text/plain;charset=utf-8;base64,YQ=="}}
            ]
        }
    },
    "uppercase hash": {
        "storage": {
            "files": [
                {
                    "path": "/a",
                    "contents": {
                        "source": "data:,a",
                        "verification": {
                            "hash": "sha256-CA978112CA1BBDCAFAC231B39A23DC4D"
                            "A786EFF8147C4E72B9807785AFEE48BB"
                        },
                    },
                }
            ]
        }
    },
    "unit continuation": {
        "systemd": {
            "units": [
                {"name": "a.service", "contents": "[Service]\nExecStart=/bin/sh -c 'a \\\n  b'\n"}
            ]
        }
    },
    "unit indented section": {
        "systemd": {"units": [{"name": "a.service", "contents": "  [Service]\nA=1\n"}]}
    },
    "unit CRLF": {
        "systemd": {"units": [{"name": "a.service", "contents": "[Service]\r\nA=1\r\n"}]}
    },
    "unit option at EOF": {
        "systemd": {"units": [{"name": "a.service", "contents": "[Service]\nfoo"}]}
    },
    "unit garbage after section": {
        "systemd": {"units": [{"name": "a.service", "contents": "[Un]it]\nA=b"}]}
    },
    "property before section": {
        "systemd": {"units": [{"name": "a.service", "contents": "A=b\n[Unit]\n"}]}
    },
    "dropin without contents": {
        "systemd": {"units": [{"name": "a.service", "dropins": [{"name": "a.conf"}]}]}
    },
    "relative link target": {"storage": {"links": [{"path": "/a", "target": "b"}]}},
    "mode 0": {"storage": {"files": [{"path": "/a", "mode": 0}]}},
    "negative mode": {"storage": {"files": [{"path": "/a", "mode": -1}]}},
    "append without source": {"storage": {"files": [{"path": "/a", "append": [{}]}]}},
    "merge without source": {"ignition": {"config": {"merge": [{}]}}},
    "empty replace": {"ignition": {"config": {"replace": {}}}},
    "s3 URL": {"storage": {"files": [{"path": "/a", "contents": {"source": "s3://b/k"}}]}},
    "empty source": {"storage": {"files": [{"path": "/a", "contents": {"source": ""}}]}},
    "file below a link": {
        "storage": {"files": [{"path": "/a/b"}], "links": [{"path": "/a", "target": "/x"}]}
    },
    "directory below a link": {
        "storage": {"directories": [{"path": "/a/b"}], "links": [{"path": "/a", "target": "/x"}]}
    },
    "hard link to a directory": {
        "storage": {
            "directories": [{"path": "/d"}],
            "links": [{"path": "/b", "target": "/d", "hard": True}],
        }
    },
    "hard link to a file": {
        "storage": {
            "files": [{"path": "/f"}],
            "links": [{"path": "/b", "target": "/f", "hard": True}],
        }
    },
    "filesystem format": {"storage": {"filesystems": [{"device": "/dev/sdb", "format": "ntfs"}]}},
    "filesystem without format": {"storage": {"filesystems": [{"device": "/dev/sdb"}]}},
    "kernel argument in both lists": {
        "kernelArguments": {"shouldExist": ["a"], "shouldNotExist": ["a"]}
    },
    "duplicate dropin": {
        "systemd": {
            "units": [{"name": "a.service", "dropins": [{"name": "a.conf"}, {"name": "a.conf"}]}]
        }
    },
}


@pytest.mark.skipif(not HAVE_IGNITION_VALIDATE, reason="Debian package ignition not installed")
@pytest.mark.parametrize("name", AGREEMENT)
def test_validator_agrees_with_real_ignition(name, tmp_path):
    body = AGREEMENT[name]
    config = {"ignition": {"version": "3.3.0", **body.get("ignition", {})}}
    config.update({k: v for k, v in body.items() if k != "ignition"})
    try:
        ignition.validate(config)
        ours = True
    except IgnitionError:
        ours = False
    proc = ignition_validate(config, tmp_path)
    assert ours == (proc.returncode == 0), proc.stdout + proc.stderr


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
        "/etc/containerd/config.toml",
        "/etc/modules-load.d/aks.conf",
    } <= paths
    dropins = {d["name"] for u in merged["systemd"]["units"] for d in u.get("dropins", [])}
    assert dropins == {"10-acl-restart.conf", "10-aks-config.conf"}


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


# --- the command line -----------------------------------------------------------------------


def test_cli_render_stdout_compact_and_pretty():
    args = ["ignition", "render", DATA / "full.yaml", "--files-dir", FILES]
    compact = run_cli(*args, check=True).stdout
    assert compact == ignition.dumps(render("full")) + "\n"
    assert "\n" not in compact.strip()
    pretty = run_cli(*args, "--pretty", check=True).stdout
    assert pretty == (DATA / "expected" / "full.ign").read_text()


def test_cli_render_to_file_and_json(tmp_path):
    out = tmp_path / "out.ign"
    proc = run_cli("--json", "ignition", "render", DATA / "v1_1.yaml", "-o", out, check=True)
    result = json.loads(proc.stdout)
    assert result["version"] == "3.4.0" and result["output"] == str(out)
    assert json.loads(out.read_text()) == json.loads((DATA / "expected/v1_1.ign").read_text())


def test_cli_render_invalid_exits_1_and_writes_nothing(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER + "storage:\n  files:\n    - path: rel\n    - path: /x\n      mode: 99999\n"
    )
    out = tmp_path / "out.ign"
    proc = run_cli("ignition", "render", bad, "-o", out, check=False)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == f"error: {bad}:5:7: storage.files[0].path: path not absolute: 'rel'"
    assert lines[1].startswith(f"error: {bad}:7:7: storage.files[1].mode: illegal file mode")
    assert lines[2].startswith("hint: ")
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_cli_validate_yaml_and_json(tmp_path):
    ign = tmp_path / "base.ign"
    run_cli("ignition", "render", PRODUCT[0], "-o", ign, check=True)
    proc = run_cli("ignition", "validate", ign, *PRODUCT, check=True)
    lines = proc.stdout.splitlines()
    assert len(lines) == 3
    if HAVE_IGNITION_VALIDATE:
        assert all(line.endswith("valid, Ignition 3.3.0; ignition-validate: ok") for line in lines)
    proc = run_cli("--json", "ignition", "validate", DATA / "expected" / "v1_1.ign", check=True)
    (result,) = json.loads(proc.stdout)
    assert result["valid"] and result["version"] == "3.4.0"
    if HAVE_IGNITION_VALIDATE:  # Debian's 2.14 predates spec 3.4.0: reported, not failed
        assert result["ignition_validate"]["verdict"] == "unsupported"


def test_cli_validate_reports_bad_file(tmp_path):
    bad = tmp_path / "bad.ign"
    bad.write_text('{"ignition": {"version": "3.3.0"}, "storage": {"links": [{"path": "/a"}]}}')
    proc = run_cli("ignition", "validate", PRODUCT[0], bad, check=False)
    assert proc.returncode == 1
    assert f"error: {bad}:1:58: storage.links[0]: link target is required" in proc.stderr


@pytest.mark.skipif(not HAVE_IGNITION_VALIDATE, reason="Debian package ignition not installed")
def test_cli_validate_reports_ignition_validate_verdict(tmp_path):
    # a rule only Ignition itself checks (go-systemd's 2048-byte line limit)
    unit = "[Service]\nExecStart=/bin/echo " + "x" * 3000 + "\n"
    config = {
        "ignition": {"version": "3.3.0"},
        "systemd": {"units": [{"name": "a.service", "contents": unit}]},
    }
    bad = tmp_path / "long.ign"
    bad.write_text(json.dumps(config))
    assert ignition.validate(config) == []  # our checks pass it ...
    proc = run_cli("--json", "ignition", "validate", bad, check=False)
    assert proc.returncode == 1  # ... Ignition does not, and its verdict decides
    (result,) = json.loads(proc.stdout)
    assert result["ignition_validate"]["verdict"] == "invalid"
    assert "line too long" in result["errors"][0]
    assert f"error: {bad}: ignition-validate: error at $.systemd.units.0.contents" in proc.stderr


def test_cli_merge(tmp_path):
    out = tmp_path / "merged.ign"
    proc = run_cli("ignition", "merge", *PRODUCT, "-o", out, check=True)
    assert "merged 2 configs" in proc.stdout
    merged = json.loads(out.read_text())
    assert merged == ignition.merge([ignition.render(p, warnings=[]) for p in PRODUCT])
    assert run_cli("ignition", "merge", PRODUCT[0]).returncode == 2  # -o is required
