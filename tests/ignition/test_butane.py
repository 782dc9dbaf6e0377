"""Butane-style YAML -> Ignition: the corpus, data URLs, located errors for invalid YAML.

Cross-checks: the upstream JSON schemas (via jsonschema, read from tests/data/reference, not
the package's copy), Debian's real `ignition-validate` on every 3.3.0 output, and decoding every
data URL back to the exact input bytes.
"""

from __future__ import annotations

import base64
import gzip
import json
import random

import pytest

from acl_compose import ignition
from acl_compose.ignition.locate import IgnitionError
from acl_compose.ignition.validation import decode_data_url
from tests.ignition.common import (
    CORPUS,
    DATA,
    FILES,
    HAVE_IGNITION_VALIDATE,
    HEADER,
    ignition_validate,
    render,
    resources,
    schema_validate,
)

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
        "6:7: storage.files[0].mode: 010000 is out of range (0 to 07777 octal, 4095)",
    ),
    (
        "storage:\n  files:\n    - path: /etc/a\n      mode: '0644'\n",
        "6:7: storage.files[0].mode: '0644' is quoted: write the number without quotes",
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
    # every error is listed, in file order; the one this case is about among them
    assert any(e.startswith(f"{bad}:{expected}") for e in exc.value.errors), exc.value.errors
    where = [tuple(map(int, e[len(f"{bad}:") :].split(":")[:2])) for e in exc.value.errors]
    assert where == sorted(where)


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


def test_every_bad_mode_is_listed_by_the_one_mode_rule(tmp_path):
    """Three bad modes used to give two errors ('all errors are listed'), `mode: 0999` said
    'expected integer, got string', and sysext.yaml read modes by another rule."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        HEADER + "storage:\n  files:\n"
        "    - path: /etc/a\n      mode: 0999\n"
        "    - path: /etc/b\n      mode: 99999\n"
        "    - path: /etc/c\n      mode: '0644'\n"
        "    - path: /etc/d\n      mode: 0o640\n"
        "    - path: rel\n"
    )  # fmt: skip
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, warnings=[])
    assert [e.removeprefix(f"{bad}:") for e in exc.value.errors] == [
        "6:7: storage.files[0].mode: 0999 is not an octal number (digits 0-7 after the 0)",
        "8:7: storage.files[1].mode: 99999 is out of range (0 to 07777 octal, 4095)",
        "10:7: storage.files[2].mode: '0644' is quoted: write the number without quotes, "
        "e.g. mode: 0644",
        "13:7: storage.files[4].path: path not absolute: 'rel'",
    ]
    good = tmp_path / "good.yaml"
    good.write_text(HEADER + "storage:\n  files:\n    - path: /etc/d\n      mode: 0o640\n")
    assert ignition.render(good, warnings=[])["storage"]["files"][0]["mode"] == 0o640


def test_butane_version_must_be_text(tmp_path):
    bad = tmp_path / "v.yaml"
    bad.write_text("variant: flatcar\nversion: 1.0\n")
    with pytest.raises(IgnitionError) as exc:
        ignition.render(bad, warnings=[])
    assert exc.value.errors == [
        f'{bad}:2:1: version: 1.0 is a number in YAML, not text: quote it, version: "1.0"'
    ]
