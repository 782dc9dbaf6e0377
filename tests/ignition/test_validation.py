"""Ignition JSON input: located errors, and the same verdict as Debian's ignition-validate."""

from __future__ import annotations

import json

import pytest

from acl_compose import ignition
from acl_compose.ignition.locate import IgnitionError, json_positions
from tests.ignition.common import (
    HAVE_IGNITION_VALIDATE,
    ignition_validate,
)

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


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Infinity", "1:1: invalid JSON: Infinity is not a JSON value"),  # found by fuzzing
        ('{"a": "NaN",\n "b": NaN}', "2:7: invalid JSON: NaN is not a JSON value"),
        ('{"a": ' + "[" * 10_000 + "]" * 10_000 + "}", "1:70: invalid JSON: nested deeper than"),
        ("[" + "1" * 5000 + "]", "1:2: invalid JSON: number too long"),
    ],
)
def test_json_python_reads_but_json_is_not_is_located(tmp_path, text, expected):
    # json.loads accepts NaN/Infinity, recurses per level and refuses huge ints with a bare
    # ValueError; each is a located IgnitionError instead of a crash or a wrong acceptance.
    bad = tmp_path / "bad.ign"
    bad.write_text(text)
    with pytest.raises(IgnitionError) as exc:
        ignition.load(bad, warnings=[])
    assert exc.value.errors[0].startswith(f"{bad}:{expected}")
