"""erofs.set_uuid: byte for byte what `mkfs.erofs -U` makes, which the kernel would mount."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.sysext import erofs

A = "11111111-2222-4333-8444-555555555555"
B = "9f0e6c1a-07d4-4b5e-a1c2-3d4e5f607182"


def mkfs(tree: Path, out: Path, uuid: str, *extra: str) -> bytes:
    subprocess.run(["mkfs.erofs", "--quiet", "-T0", f"-U{uuid}", "--all-root", "-x-1", *extra,
                    str(out), str(tree)], check=True)  # fmt: skip
    return out.read_bytes()


@pytest.mark.parametrize("extra", [(), ("-zlz4",)])
def test_set_uuid_equals_mkfs(tmp_path: Path, extra: tuple[str, ...]) -> None:
    tree = tmp_path / "tree"
    (tree / "usr/lib").mkdir(parents=True)
    (tree / "usr/lib/x.conf").write_text("x = 1\n" * 1000)
    want = mkfs(tree, tmp_path / "b.img", B, *extra)
    got = tmp_path / "a.img"
    assert mkfs(tree, got, A, *extra) != want  # the UUID (and the checksum) do show
    erofs.set_uuid(got, B)
    assert got.read_bytes() == want
    # At an offset (inside a larger file), the same bytes there.
    inside = tmp_path / "inside.img"
    inside.write_bytes(bytes(8192) + (tmp_path / "b.img").read_bytes())
    erofs.set_uuid(inside, A, offset=8192)
    assert inside.read_bytes()[:8192] == bytes(8192)
    assert inside.read_bytes()[8192:] == mkfs(tree, tmp_path / "a2.img", A, *extra)
    # fsck.erofs checks the superblock checksum (it says so, but exits 0 either way).
    assert "chksum" not in fsck(got)
    bad = bytearray(want)
    bad[1028] ^= 1
    got.write_bytes(bad)
    assert "chksum doesn't match" in fsck(got)


def fsck(image: Path) -> str:
    proc = subprocess.run(["fsck.erofs", str(image)], capture_output=True, text=True)
    return proc.stdout + proc.stderr


def test_refuses_what_is_not_erofs(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(bytes(8192))
    with pytest.raises(InputError, match="no erofs superblock"):
        erofs.set_uuid(junk, A)
    assert junk.read_bytes() == bytes(8192)
