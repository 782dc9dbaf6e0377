"""sysext.contents: every file of a built sysext, with its origin from the bundle's sources."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from acl_compose import sysext
from acl_compose.fetch import httpserve


def _strip(items: list[dict]) -> list[dict]:
    return [{k: v for k, v in i.items() if k != "origin"} for i in items]


@pytest.mark.parametrize("filesystem", ["erofs", "squashfs"])
def test_every_file_has_its_origin(tmp_path: Path, cache_dir: Path, filesystem: str) -> None:
    """from (a file and a tree), inline, url + sha256, symlink and generated files, each named
    by the bundle entry it came from; read back from the image, the same files and hashes."""
    served = tmp_path / "www"
    served.mkdir()
    payload = b"#!/bin/sh\necho pinned\n"
    (served / "tool").write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    bundle = tmp_path / "demo"
    (bundle / "files" / "tree" / "sub").mkdir(parents=True)
    (bundle / "files" / "one.conf").write_text("one\n")
    (bundle / "files" / "tree" / "a").write_text("a\n")
    (bundle / "files" / "tree" / "sub" / "b").write_text("b\n")
    (bundle / "files" / "demo.service").write_text(
        "[Service]\nExecStart=/usr/bin/tool\n[Install]\nWantedBy=multi-user.target\n"
    )
    with httpserve.serve(served) as server:
        url = f"{server.url.rstrip('/')}/tool"
        (bundle / "sysext.yaml").write_text(
            f"name: demo\nversion: '3'\nfilesystem: {filesystem}\nunits: [demo.service]\n"
            "files:\n"
            "  - {path: /usr/lib/demo/one.conf, from: files/one.conf}\n"
            "  - {path: /usr/share/demo, from: files/tree}\n"
            "  - {path: /usr/lib/demo/inline.txt, inline: hello}\n"
            f"  - {{path: /usr/bin/tool, url: '{url}', sha256: {sha}, mode: 0755}}\n"
            "  - {path: /usr/bin/tool2, symlink: tool}\n"
            "  - {path: /usr/lib/systemd/system/demo.service, from: files/demo.service}\n"
        )
        result = sysext.build(bundle, tmp_path / "out", cache_dir=cache_dir)
    by_path = {c["path"]: c for c in result["contents"]}
    origins = {p: c["origin"] for p, c in by_path.items()}
    assert origins["/usr/lib/demo/one.conf"] == {
        "kind": "from", "bundle": "demo", "from": "files/one.conf"}  # fmt: skip
    assert origins["/usr/share/demo/sub/b"]["from"] == "files/tree/sub/b"
    assert origins["/usr/lib/demo/inline.txt"]["kind"] == "inline"
    assert origins["/usr/bin/tool"] == {"kind": "url", "bundle": "demo", "url": url,
                                        "sha256": sha}  # fmt: skip
    assert origins["/usr/bin/tool2"]["kind"] == "symlink"
    assert origins["/usr/lib/systemd/system/multi-user.target.wants/demo.service"] == {
        "kind": "generated", "bundle": "demo", "by": "units: demo.service"}  # fmt: skip
    assert origins["/usr/lib/extension-release.d/extension-release.demo"]["kind"] == "generated"
    assert not [p for p, o in origins.items() if o["kind"] == "unknown"]
    tool = by_path["/usr/bin/tool"]
    assert (tool["sha256"], tool["mode"], tool["size"]) == (sha, "0755", len(payload))
    assert tool["sha1"] == hashlib.sha1(payload).hexdigest()
    assert by_path["/usr/bin/tool2"]["target"] == "tool"
    # The cached build returns the same record; the image read back holds exactly these files.
    again = sysext.build(bundle, tmp_path / "out2", cache_dir=cache_dir)
    assert again["contents"] == result["contents"]
    read_back = sysext.image_contents(result["path"], {"kind": "image"})
    assert _strip(read_back) == _strip(result["contents"])
    assert {o["origin"]["kind"] for o in read_back} == {"image"}


def test_check_warns_when_two_extensions_ship_one_path(tmp_path: Path) -> None:
    """Merged, two extensions shipping one path show only one copy: `sysext check` says so
    (and still passes: each image alone is fine); disjoint images draw no warning."""
    from tests.conftest import run_cli

    def build(name: str, files: str) -> Path:
        d = tmp_path / name
        d.mkdir()
        (d / "sysext.yaml").write_text(f"name: {name}\nversion: '1'\nfiles:\n{files}")
        return Path(sysext.build(d, tmp_path / "out")["path"])

    rule = "  - {path: /usr/lib/udev/rules.d/66-x.rules, inline: 'x'}\n"
    a = build("a-ext", rule + "  - {path: /usr/share/a/only, inline: 'a'}\n")
    b = build("b-ext", rule + "  - {path: /usr/share/b/only, symlink: ../a/only}\n")
    c = build("c-ext", "  - {path: /usr/share/c/only, inline: 'c'}\n")
    base = tmp_path / "os-release"
    base.write_text("ID=flatcar\nSYSEXT_LEVEL=1.0\n")
    proc = run_cli("sysext", "check", a, b, c, "--base", base, check=True)
    warnings = [ln for ln in proc.stderr.splitlines() if ln.startswith("warning:")]
    assert warnings == [
        "warning: /usr/lib/udev/rules.d/66-x.rules is in a-ext.raw and b-ext.raw: the merged "
        "/usr shows one of them, hiding the other"
    ]
    assert "warning" not in run_cli("sysext", "check", a, c, "--base", base, check=True).stderr
