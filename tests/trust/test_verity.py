"""trust.verity against the real veritysetup: same root hash, byte-identical hash area."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.run import require
from acl_compose.trust import verity, verity_tree

UUID = "12345678-1234-5678-9abc-def012345678"


def veritysetup(*args: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("veritysetup"), *map(str, args)], capture_output=True, text=True, check=False
    )


def vs_format(*args: object) -> str:
    proc = veritysetup("format", *args)
    assert proc.returncode == 0, proc.stderr
    return next(
        line.split()[-1] for line in proc.stdout.splitlines() if line.startswith("Root hash")
    )


def random_file(path: Path, size: int, rng: random.Random, sparse: bool = False) -> Path:
    """Random data; with sparse=True a mix of holes, zero blocks and random runs."""
    with open(path, "wb") as f:
        if not sparse:
            f.write(rng.randbytes(size))
        else:
            pos = 0
            while pos < size:
                run = min(size - pos, rng.choice([512, 4096, 20000, 70000]))
                kind = rng.randrange(3)
                if kind == 0:
                    f.seek(pos + run)  # hole
                else:
                    f.write(rng.randbytes(run) if kind == 1 else bytes(run))
                pos += run
            f.truncate(size)
    return path


def _vs_args(kw: dict) -> list[str]:
    args = [
        "--hash",
        kw.get("algorithm", "sha256"),
        "--data-block-size",
        kw.get("data_block_size", 4096),
        "--hash-block-size",
        kw.get("hash_block_size", 4096),
        "--format",
        kw.get("hash_type", 1),
        "--salt",
        kw["salt"].hex() or "-",
    ]
    if not kw.get("superblock", True):
        args.append("--no-superblock")
    else:
        args += ["--uuid", UUID]
    if kw.get("data_blocks") is not None:
        args += ["--data-blocks", kw["data_blocks"]]
    if kw.get("hash_offset") is not None:
        args += ["--hash-offset", kw["hash_offset"]]
    return [str(a) for a in args]


def _cases() -> list[tuple[int, dict]]:
    cases: list[tuple[int, dict]] = [
        (4096, {"salt": b""}),  # one block: root = H(block), no hash blocks
        (4096, {"salt": bytes(range(32)), "superblock": False}),
        (10000, {"salt": b"\x01"}),  # partial last block, ignored as veritysetup does
        # 3+ levels: 512-byte hash blocks hold 16 sha256 digests
        (5000 * 512, {"salt": b"ab", "data_block_size": 512, "hash_block_size": 512}),
        (700 * 512, {"salt": b"", "data_block_size": 512, "hash_block_size": 512, "hash_type": 0}),
        (300 * 4096 + 5, {"salt": b"s" * 256, "algorithm": "sha1", "hash_type": 0}),
        (300 * 4096, {"salt": b"x" * 7, "algorithm": "sha512", "superblock": False}),
        (129 * 4096, {"salt": b"1234", "algorithm": "sha1"}),
        (20 * 65536, {"salt": b"", "data_block_size": 65536, "hash_block_size": 1024}),
        (9000 * 512, {"salt": b"q", "data_block_size": 512, "hash_block_size": 65536}),
        (100 * 4096, {"salt": b"", "data_blocks": 37, "hash_offset": 8192}),
        (50 * 4096, {"salt": b"z", "hash_offset": 3 * 512, "superblock": False}),
    ]
    rng = random.Random(2)
    for _ in range(12):
        dbs = 1 << rng.randint(9, 13)
        kw = {
            "salt": rng.randbytes(rng.choice([0, 1, 32, 100])),
            "algorithm": rng.choice(["sha1", "sha256", "sha512"]),
            "data_block_size": dbs,
            "hash_block_size": 1 << rng.randint(9, 13),
            "hash_type": rng.choice([0, 1]),
            "superblock": rng.random() < 0.7,
        }
        cases.append((rng.randint(1, 3000) * dbs + rng.choice([0, 0, 17]), kw))
    return cases


@pytest.mark.parametrize("size,kw", _cases(), ids=lambda v: str(v) if isinstance(v, int) else "")
def test_separate_hash_file_matches_veritysetup(tmp_path: Path, size: int, kw: dict) -> None:
    rng = random.Random(size)
    data = random_file(tmp_path / "data", size, rng, sparse=size % 2 == 0)
    root = vs_format(data, tmp_path / "vs.hash", *_vs_args(kw))
    result = verity.create(data, tmp_path / "our.hash", uuid=UUID, **kw)
    assert result.root_hash == root
    assert (tmp_path / "our.hash").read_bytes() == (tmp_path / "vs.hash").read_bytes()
    assert result.data_blocks == (kw.get("data_blocks") or size // result.data_block_size)
    # and veritysetup accepts our tree
    # without a superblock veritysetup needs the layout again (hash, block sizes, type, salt)
    verify_args = ["--no-superblock", *_vs_args(kw)[:10]] if not kw.get("superblock", 1) else []
    if kw.get("hash_offset") is not None:
        verify_args += ["--hash-offset", str(kw["hash_offset"])]
    proc = veritysetup("verify", data, tmp_path / "our.hash", root, *verify_args)
    assert proc.returncode == 0, proc.stderr
    layout = {k: v for k, v in kw.items() if not kw.get("superblock", True) or k == "hash_offset"}
    assert verity.verify(data, tmp_path / "our.hash", root, **layout).root_hash == root


@pytest.mark.parametrize(
    "kw",
    [
        {"salt": b"\x42"},
        {"salt": b"", "superblock": False, "data_blocks": 90, "hash_offset": 90 * 4096},
        {"salt": b"ab", "data_block_size": 512, "hash_block_size": 512, "data_blocks": 700},
    ],
)
def test_hash_offset_in_data_file_matches_veritysetup(tmp_path: Path, kw: dict) -> None:
    rng = random.Random(7)
    ours = random_file(tmp_path / "ours.img", 100 * 4096, rng)
    theirs = tmp_path / "theirs.img"
    shutil.copy(ours, theirs)
    result = verity.create(ours, uuid=UUID, **kw)
    # default offset: right after the data, rounded up to the hash block size
    if "hash_offset" not in kw:
        assert result.hash_offset == 100 * 4096 if "data_blocks" not in kw else 700 * 512
    args = _vs_args({**kw, "hash_offset": result.hash_offset})
    assert vs_format(theirs, theirs, *args) == result.root_hash
    assert ours.read_bytes() == theirs.read_bytes()
    assert os.path.getsize(ours) == max(100 * 4096, result.hash_offset + result.hash_size)
    layout = {"hash_offset": result.hash_offset}
    if not kw.get("superblock", True):
        layout.update(kw)
    verity.verify(ours, None, result.root_hash, **layout)


def test_workers_pool_matches_inline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Small task sizes so a few MiB exercise the process pool and task boundaries.
    monkeypatch.setattr(verity_tree, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(verity_tree, "TASK_BYTES", 64 << 10)
    monkeypatch.setattr(verity_tree, "READ_BYTES", 16 << 10)
    data = random_file(tmp_path / "d", 3 * 1024 * 1024 + 4096 * 3, random.Random(3), sparse=True)
    a = verity.create(data, tmp_path / "a", salt=b"x", workers=3)
    b = verity.create(data, tmp_path / "b", salt=b"x", workers=1)
    assert a.root_hash == b.root_hash == vs_format(data, tmp_path / "c", "--salt", "78")
    assert (tmp_path / "a").read_bytes()[512:] == (tmp_path / "c").read_bytes()[512:]
    verity.verify(data, tmp_path / "a", a.root_hash, workers=2)
    _flip(data, 2 * 1024 * 1024 + 5)
    with pytest.raises(verity.VerityError, match=r"^data block 512 is corrupted"):
        verity.verify(data, tmp_path / "a", a.root_hash, workers=2)


def _flip(path: Path, offset: int, bit: int = 0) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ (1 << bit)]))


@pytest.mark.parametrize(
    "kw",
    [
        {"salt": b"s", "data_block_size": 512, "hash_block_size": 512},  # 4 levels
        {"salt": b"", "algorithm": "sha1", "hash_type": 0, "hash_block_size": 1024},
    ],
)
def test_flipped_bits_name_the_block(tmp_path: Path, kw: dict) -> None:
    rng = random.Random(11)
    data = random_file(tmp_path / "d", 5000 * 512, rng)
    tree = tmp_path / "h"
    res = verity.create(data, tree, **kw)
    lay = verity_tree.Layout(
        res.algorithm, res.hash_type, res.salt, res.data_block_size, res.hash_block_size,
        res.data_blocks, 0, True,
    )  # fmt: skip
    assert lay.levels >= 2
    pristine_data, pristine_tree = data.read_bytes(), tree.read_bytes()
    hbs, tree_start = res.hash_block_size, lay.tree_start * res.hash_block_size
    for _ in range(12):
        # data flips
        off = rng.randrange(res.data_blocks * res.data_block_size)
        _flip(data, off, rng.randrange(8))
        with pytest.raises(verity.VerityError) as exc:
            verity.verify(data, tree, res.root_hash)
        assert exc.value.message.startswith(f"data block {off // res.data_block_size} is corrupted")
        assert veritysetup("verify", data, tree, res.root_hash).returncode != 0
        data.write_bytes(pristine_data)
        # tree flips, anywhere in any level including padding
        off = rng.randrange(tree_start, len(pristine_tree))
        _flip(tree, off, rng.randrange(8))
        with pytest.raises(verity.VerityError) as exc:
            verity.verify(data, tree, res.root_hash)
        assert exc.value.message.startswith(f"hash block {off // hbs} is corrupted")
        assert (exc.value.kind, exc.value.block) == ("hash", off // hbs)
        tree.write_bytes(pristine_tree)
    verity.verify(data, tree, res.root_hash)


def test_wrong_root_hash_and_truncated_tree(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 40 * 4096, random.Random(1))
    res = verity.create(data, tmp_path / "h")
    # A mistyped root hash is not reported as a corrupted block to rebuild.
    typo = res.root_hash[:-1] + ("0" if res.root_hash[-1] != "0" else "1")
    with pytest.raises(verity.RootHashMismatch) as exc:
        verity.verify(data, tmp_path / "h", typo)
    assert exc.value.message == (
        f"root hash {typo} does not match the hash tree of {data} (the tree and the data agree "
        "with each other: likely a wrong root hash, or a wrong salt)"
    )
    assert "corrupted" not in exc.value.message and "rebuild" not in exc.value.hint
    assert veritysetup("verify", data, tmp_path / "h", typo).returncode != 0
    one = random_file(tmp_path / "one", 4096, random.Random(2))
    r1 = verity.create(one, tmp_path / "h1")
    with pytest.raises(verity.RootHashMismatch, match="does not match data block 0 of"):
        verity.verify(one, tmp_path / "h1", "11" * 32)
    verity.verify(one, tmp_path / "h1", r1.root_hash)
    with open(tmp_path / "h", "r+b") as f:
        f.truncate(4096 + 100)
    with pytest.raises(verity.VerityError, match="truncated"):
        verity.verify(data, tmp_path / "h", res.root_hash)


def test_superblock_roundtrip_and_conflicts(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 10 * 4096, random.Random(4))
    vs_format(data, tmp_path / "vs", "--salt", "c0ffee", "--uuid", UUID, "--hash", "sha512")
    sb = verity.read_superblock(tmp_path / "vs")
    assert sb is not None
    assert (sb.uuid, sb.salt, sb.algorithm, sb.data_blocks) == (UUID, b"\xc0\xff\xee", "sha512", 10)
    assert sb.to_bytes() == (tmp_path / "vs").read_bytes()[:512]
    assert verity.read_superblock(data) is None
    with pytest.raises(InputError, match="differs from the superblock"):
        verity.verify(data, tmp_path / "vs", "00" * 64, algorithm="sha256")
    with pytest.raises(InputError, match="no verity superblock"):
        verity.verify(data, data, "00" * 32, hash_offset=4096)


def test_default_salt_is_random_and_uuid_set(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 3 * 4096, random.Random(5))
    a = verity.create(data, tmp_path / "a")
    b = verity.create(data, tmp_path / "b")
    assert len(a.salt) == 32 and a.salt != b.salt and a.root_hash != b.root_hash
    assert a.uuid and a.to_json()["salt"] == a.salt.hex()
    assert set(a.to_json()) == {
        "root_hash", "salt", "hash_algorithm", "data_blocks", "data_block_size",
        "hash_block_size", "hash_offset", "uuid",
    }  # fmt: skip


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"data_block_size": 3000}, "not a power of two"),
        ({"hash_block_size": 256}, "not a power of two"),
        ({"hash_block_size": 131072}, "not a power of two"),
        ({"algorithm": "md5"}, "unsupported hash algorithm"),
        ({"hash_type": 2}, "hash type 2"),
        ({"hash_offset": 1000}, "not a multiple of 512"),
        ({"salt": b"x" * 257}, "at most 256"),
        ({"data_blocks": 11}, "smaller than 11 blocks"),
        ({"workers": 0}, "at least 1"),
        ({"uuid": "nope"}, "UUID"),
    ],
)
def test_bad_parameters_write_nothing(tmp_path: Path, kw: dict, match: str) -> None:
    data = random_file(tmp_path / "d", 10 * 4096, random.Random(6))
    with pytest.raises(InputError, match=match):
        verity.create(data, tmp_path / "h", **kw)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_overlap_and_missing_files_write_nothing(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 10 * 4096, random.Random(8))
    before = data.read_bytes()
    with pytest.raises(InputError, match="overlaps the data"):
        verity.create(data, hash_offset=4096)
    with pytest.raises(InputError, match="overlaps the data"):  # no superblock: block-aligned
        verity.create(data, data, hash_offset=9 * 4096 + 512, superblock=False)
    assert data.read_bytes() == before
    with pytest.raises(InputError, match="cannot read data file .*missing"):
        verity.create(tmp_path / "missing", tmp_path / "h")
    with pytest.raises(InputError, match="no whole"):
        verity.create(random_file(tmp_path / "small", 100, random.Random(1)), tmp_path / "h")
    assert not (tmp_path / "h").exists()
    with pytest.raises(InputError, match="hash file .*nothere"):
        verity.verify(data, tmp_path / "nothere", "00" * 32)
    res = verity.create(data, tmp_path / "h")
    for bad in ("xyz", "00" * 31, res.root_hash + "0"):
        with pytest.raises(InputError, match="root hash"):
            verity.verify(data, tmp_path / "h", bad)


def test_existing_hash_file_keeps_bytes_before_offset(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 10 * 4096, random.Random(9))
    prefix = random.Random(1).randbytes(8192)
    (tmp_path / "h").write_bytes(prefix + b"\xff" * 100)
    res = verity.create(data, tmp_path / "h", hash_offset=8192)
    assert (tmp_path / "h").read_bytes()[:8192] == prefix
    verity.verify(data, tmp_path / "h", res.root_hash, hash_offset=8192)


# ---------------------------------------------------------------- CLI


def test_cli_format_verify(tmp_path: Path, cli) -> None:
    data = random_file(tmp_path / "d", 64 * 4096, random.Random(10))
    proc = cli("verity", "format", data, tmp_path / "h", "--salt", "-", "--uuid", UUID, check=True)
    root = proc.stdout.splitlines()[-1]
    assert root == vs_format(data, tmp_path / "vs", "--salt", "-", "--uuid", UUID)
    proc = cli("--json", "verity", "format", data, "--in-place", "--root-hash-file",
               tmp_path / "rh", check=True)  # fmt: skip
    import json

    out = json.loads(proc.stdout)
    assert set(out) >= {"root_hash", "salt", "hash_offset", "uuid", "data_blocks"}
    assert (tmp_path / "rh").read_text() == out["root_hash"]
    assert out["hash_offset"] == 64 * 4096
    cli("verity", "verify", data, tmp_path / "h", root, check=True)
    cli("verity", "verify", data, "--hash-offset", out["hash_offset"], "--root-hash-file",
        tmp_path / "rh", check=True)  # fmt: skip
    _flip(data, 5 * 4096 + 9)
    proc = cli("verity", "verify", data, tmp_path / "h", root)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[0] == "error: data block 5 is corrupted"


def test_cli_bad_input(tmp_path: Path, cli) -> None:
    data = random_file(tmp_path / "d", 8 * 4096, random.Random(12))
    for args, needle in [
        (["format", tmp_path / "missing", tmp_path / "h"], "missing"),
        (["format", data, "--hash-offset", "4096"], "overlaps"),
    ]:
        proc = cli("verity", *args)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines[0].startswith("error: ") and needle in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
    # Bad option values and arguments are usage errors: exit 2, click's usage message.
    for args, needle in [
        (["format", data, tmp_path / "h", "--data-block-size", "1000"], "power of two"),
        (["format", data, tmp_path / "h", "--salt", "zz"], "salt"),
        (["format", data, tmp_path / "h", "--format", "2"], "--format"),
        (["format", data, tmp_path / "h", "--workers", "0"], "--workers"),
        (["format", data, tmp_path / "h", "--hash", "md5"], "--hash"),
        (["verify", data, tmp_path / "h", "nothex"], "ROOT_HASH"),
        (["verify", data], "missing ROOT_HASH"),
    ]:
        proc = cli("verity", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_cli_format_writes_into_data_only_when_asked(tmp_path: Path, cli) -> None:
    """`verity format DATA` without HASH used to append the tree to DATA silently."""
    data = random_file(tmp_path / "d", 8 * 4096, random.Random(15))
    before = data.read_bytes()
    proc = cli("verity", "format", data)
    assert proc.returncode == 2 and "missing HASH" in proc.stderr
    assert "--in-place" in proc.stderr and data.read_bytes() == before
    root = cli("verity", "format", data, "--in-place", "--salt", "-", check=True).stdout.split()[-1]
    assert data.read_bytes()[: len(before)] == before and data.stat().st_size > len(before)
    assert veritysetup("verify", f"--hash-offset={len(before)}", data, data, root).returncode == 0
    proc = cli("verity", "format", data, tmp_path / "h", "--in-place")
    assert proc.returncode == 2 and "not both" in proc.stderr


def test_cli_root_hash_typo_is_not_reported_as_corruption(tmp_path: Path, cli) -> None:
    data = random_file(tmp_path / "d", 300 * 4096, random.Random(16))
    root = cli("verity", "format", data, tmp_path / "h", check=True).stdout.split()[-1]
    typo = ("1" if root[0] != "1" else "2") + root[1:]
    proc = cli("verity", "verify", data, tmp_path / "h", typo)
    assert proc.returncode == 1
    first, hint = proc.stderr.splitlines()[:2]
    assert first.startswith(f"error: root hash {typo} does not match the hash tree of {data}")
    assert "likely a wrong root hash" in first and "corrupted" not in proc.stderr
    assert hint.startswith("hint: check the root hash")
    # A flipped data bit, with the right root hash, still names its block.
    _flip(data, 7 * 4096 + 1)
    proc = cli("verity", "verify", data, tmp_path / "h", root)
    assert proc.stderr.splitlines()[0] == "error: data block 7 is corrupted"


def test_wrong_salt_and_damaged_top_block_are_told_apart(tmp_path: Path) -> None:
    data = random_file(tmp_path / "d", 600 * 4096, random.Random(17))
    tree = tmp_path / "h"
    res = verity.create(data, tree, salt=b"\x01" * 8, superblock=False)
    # Without a superblock the salt comes from the user: a wrong one breaks every hash.
    with pytest.raises(verity.RootHashMismatch, match="nor does the tree match its own blocks"):
        verity.verify(data, tree, res.root_hash, salt=b"\x02" * 8, superblock=False)
    verity.verify(data, tree, res.root_hash, salt=b"\x01" * 8, superblock=False)
    lay = verity_tree.Layout("sha256", 1, res.salt, 4096, 4096, res.data_blocks, 0, False)
    assert lay.levels == 2
    top = lay.level_start[-1]
    _flip(tree, top * 4096 + 4000)  # in the top block's zero padding
    with pytest.raises(verity.VerityError) as exc:
        verity.verify(data, tree, res.root_hash, salt=res.salt, superblock=False)
    assert not isinstance(exc.value, verity.RootHashMismatch)
    assert exc.value.message == f"hash block {top} is corrupted"


def test_workers_in_a_threaded_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With other threads alive the pool must not fork (forkserver instead); same result.
    import threading

    monkeypatch.setattr(verity_tree, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(verity_tree, "TASK_BYTES", 256 << 10)
    data = random_file(tmp_path / "d", 2 << 20, random.Random(13))
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        res = verity.create(data, tmp_path / "h", salt=b"", workers=2)
    finally:
        stop.set()
        thread.join()
    assert res.root_hash == vs_format(data, tmp_path / "vs", "--salt", "-")


def test_worker_failures_reach_the_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    monkeypatch.setattr(verity_tree, "POOL_MIN_BYTES", 0)
    monkeypatch.setattr(verity_tree, "TASK_BYTES", 64 << 10)
    # Session fixtures (loopback servers) may leave threads running, which switches
    # create() to the forkserver pool where the patches below do not reach: pin the fork path.
    monkeypatch.setattr(verity_tree, "_can_fork", lambda: True)
    data = random_file(tmp_path / "d", 1 << 20, random.Random(14))

    def fails(*args: object) -> bytes:
        raise InputError("boom in a worker")

    monkeypatch.setattr(verity_tree, "_hash_range", fails)
    with pytest.raises(InputError, match="boom in a worker"):
        verity.create(data, tmp_path / "h", workers=2)
    assert not (tmp_path / "h").exists()

    def dies(*args: object) -> bytes:
        os.kill(os.getpid(), signal.SIGKILL)
        return b""

    monkeypatch.setattr(verity_tree, "_hash_range", dies)
    with pytest.raises(InputError, match="died"):
        verity.create(data, tmp_path / "h", workers=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_data_at_an_offset(tmp_path: Path) -> None:
    """Data inside a bigger file (a DDI's data slot): same tree as the data alone."""
    rng = random.Random(7)
    alone = random_file(tmp_path / "alone", 5 << 20, rng)
    offset = 1 << 20
    slot = tmp_path / "slot"
    with open(slot, "wb") as f:
        f.write(rng.randbytes(offset))  # what precedes the data must not count
        f.write(alone.read_bytes())
    kw = {"salt": bytes(32), "uuid": UUID}
    want = verity.create(alone, tmp_path / "a.tree", **kw)
    got = verity.create(slot, tmp_path / "s.tree", data_offset=offset, **kw)
    assert got.root_hash == want.root_hash and got.data_blocks == want.data_blocks
    assert (tmp_path / "a.tree").read_bytes() == (tmp_path / "s.tree").read_bytes()
    for workers in (1, 2):
        verity.verify(slot, tmp_path / "s.tree", got.root_hash, data_offset=offset, workers=workers)
    with open(slot, "r+b") as f:
        f.seek(offset + 3 * 4096 + 5)
        f.write(b"\xff")
    for workers in (1, 2):
        with pytest.raises(verity_tree.VerityError, match="data block 3 "):
            verity.verify(
                slot, tmp_path / "s.tree", want.root_hash, data_offset=offset, workers=workers
            )


def test_sparse_data_on_a_full_tmpfs(tmp_path: Path, small_tmpfs: Path) -> None:
    """Holes are not touched through mmap (on a full tmpfs that is SIGBUS), and a data run
    that starts and ends inside a block still hashes those blocks as veritysetup does."""
    data = small_tmpfs / "sparse.img"
    with open(data, "wb") as f:
        f.truncate(32 << 20)  # eight times the tmpfs
        f.seek((5 << 20) + 100)
        f.write(random.Random(5).randbytes(3 * 4096))
    with open(small_tmpfs / "filler", "wb") as f, pytest.raises(OSError, match="No space"):
        while True:
            f.write(bytes(1 << 16))
            f.flush()
    fixed = ["--uuid", UUID, "--salt", "ab" * 32]
    root = vs_format(data, tmp_path / "vs.hash", *fixed)  # read(2) of a hole allocates nothing
    proc = subprocess.run(
        [sys.executable, "-m", "acl_compose", "verity", "format", data, tmp_path / "our.hash",
         *fixed],
        capture_output=True, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr  # -7: SIGBUS
    assert (tmp_path / "our.hash").read_bytes() == (tmp_path / "vs.hash").read_bytes()
    assert root in proc.stdout
