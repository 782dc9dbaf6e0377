"""The dm-verity engine behind acl_compose.verity: tree geometry, leaf hashing in worker
processes, writing a tree and checking one top-down.

Geometry follows cryptsetup's VERITY_create_or_verify_hash exactly (FACTS section 3).
Hashing the data (the leaves) is nearly all the work. With several workers, forked children
take task numbers from a pipe, open the data themselves (mmap, no copies), and write their
leaf hash blocks straight into the tree file (or compare them with it); the parent then
builds the small upper levels. A process with threads must not fork, so it uses a
forkserver pool that sends the digests back instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import select
import signal
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError, InputError, VerificationError
from acl_compose.util import data_ranges

SUPERBLOCK_SIZE = 512

# Bytes hashed per worker task, and per read inside a task. Tasks are aligned to whole leaf
# hash blocks so the parent can assemble each task's leaf blocks independently.
TASK_BYTES = 16 << 20
READ_BYTES = 1 << 20
# Below this much data a process pool costs more than it saves.
POOL_MIN_BYTES = 32 << 20


class VerityError(VerificationError):
    """A hash tree does not match its data or root hash."""

    hint = "the data or its hash tree was modified; rebuild it or fetch a trusted copy"


@dataclass
class Layout:
    """Geometry of one tree, computed exactly as cryptsetup's VERITY_create_or_verify_hash."""

    algorithm: str
    hash_type: int
    salt: bytes
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    hash_offset: int
    superblock: bool
    data_offset: int = 0  # where block 0 of the data starts in the data file (a DDI slot)
    digest_size: int = 0
    entry_size: int = 0  # bytes per digest inside a hash block
    per_block: int = 0  # digests per hash block
    tree_start: int = 0  # first hash block (absolute block number in the hash file)
    level_start: list[int] = field(default_factory=list)  # index 0 = leaves
    level_blocks: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.digest_size = hashlib.new(self.algorithm).digest_size
        self.entry_size = (
            self.digest_size if self.hash_type == 0 else 1 << (self.digest_size - 1).bit_length()
        )
        bits = (self.hash_block_size // self.digest_size).bit_length() - 1
        self.per_block = 1 << bits
        if self.superblock:
            self.tree_start = (
                self.hash_offset + SUPERBLOCK_SIZE + self.hash_block_size - 1
            ) // self.hash_block_size
        else:
            self.tree_start = self.hash_offset // self.hash_block_size
        levels = 0
        while bits * levels < 64 and (self.data_blocks - 1) >> (bits * levels):
            levels += 1
        self.level_start = [0] * levels
        self.level_blocks = [0] * levels
        pos = self.tree_start
        for i in range(levels - 1, -1, -1):
            shift = (i + 1) * bits
            count = (self.data_blocks + (1 << shift) - 1) >> shift
            self.level_start[i] = pos
            self.level_blocks[i] = count
            pos += count
        self.tree_end = pos  # first block after the tree

    @property
    def levels(self) -> int:
        return len(self.level_start)

    @property
    def area_start(self) -> int:
        """Byte offset where this tree's area (superblock or first hash block) begins."""
        return self.hash_offset if self.superblock else self.tree_start * self.hash_block_size

    @property
    def end_byte(self) -> int:
        return self.tree_end * self.hash_block_size

    def hasher(self) -> Callable[[Any], bytes]:
        return block_hasher(self.algorithm, self.salt, self.hash_type)


def block_hasher(algorithm: str, salt: bytes, hash_type: int) -> Callable[[Any], bytes]:
    """A function block -> digest for one tree's salt and hash type."""
    if hash_type == 1:
        base = hashlib.new(algorithm, salt)
        copy = base.copy

        def h1(block: Any) -> bytes:
            h = copy()
            h.update(block)
            return h.digest()

        return h1

    def h0(block: Any) -> bytes:
        h = hashlib.new(algorithm, block)
        h.update(salt)
        return h.digest()

    return h0


# ---------------------------------------------------------------- leaf hashing (workers)


def _hash_range(
    path: str,
    offset: int,
    nblocks: int,
    bs: int,
    algorithm: str,
    salt: bytes,
    hash_type: int,
    entry_size: int,
) -> bytes:
    """Digests (each padded to entry_size) of `nblocks` data blocks starting at byte `offset`.

    Reads through mmap (no copy out of the page cache) in READ_BYTES windows, so resident
    memory stays at one window; whole blocks in holes of sparse files are not read at all
    (on tmpfs, touching a hole through mmap allocates a page, and SIGBUSes when it is full).
    """
    hash_blocks = _make_view_hasher(algorithm, salt, hash_type, entry_size, bs)
    zero_entry = hash_blocks(bytes(bs), 0, 1)
    out = bytearray()
    fd = os.open(path, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, offset, nblocks * bs, os.POSIX_FADV_SEQUENTIAL)
        window = max(1, READ_BYTES // bs)
        remaining, pos = nblocks, offset
        buf: bytearray | None = None
        while remaining:
            n = min(remaining, window)
            run = next(data_ranges(fd, pos, pos + n * bs), (pos + n * bs, 0))
            data_at, hole_at = run[0], run[0] + run[1]
            if lead := (data_at - pos) // bs:  # whole blocks of hole: zeros
                out += zero_entry * lead
                remaining, pos = remaining - lead, pos + lead * bs
                continue
            n = min(n, -(-(hole_at - pos) // bs))  # up to the first whole block of hole
            want = n * bs
            if buf is None:
                skew = pos % mmap.ALLOCATIONGRANULARITY
                try:
                    m = mmap.mmap(
                        fd, want + skew, mmap.MAP_SHARED | _MAP_POPULATE, mmap.PROT_READ,
                        offset=pos - skew,
                    )  # fmt: skip
                except (OSError, ValueError):  # not mappable: read into a buffer instead
                    buf = bytearray(window * bs)
                    continue
                if m.size() < pos + want:
                    m.close()
                    raise InputError(f"{path}: file is shorter than the data blocks to hash")
                with m, memoryview(m) as view:
                    out += hash_blocks(view, skew, n)
            else:
                view = memoryview(buf)
                if os.preadv(fd, [view[:want]], pos) != want:
                    raise InputError(f"{path}: file is shorter than the data blocks to hash")
                out += hash_blocks(view, 0, n)
            remaining -= n
            pos += want
    finally:
        os.close(fd)
    return bytes(out)


_MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _make_view_hasher(
    algorithm: str, salt: bytes, hash_type: int, entry_size: int, bs: int
) -> Callable[[Any, int, int], bytearray]:
    """A function (view, start, count) -> padded digests of `count` blocks from `start`.

    The per-block loop is the hot path of the whole tool: locals only, no branches that do
    not depend on the data. All-zero blocks (common in images) reuse one cached digest.
    """
    pad = b"\0" * (entry_size - hashlib.new(algorithm).digest_size)
    zero_block = bytes(bs)
    last = bs - 1
    cache: list[bytes] = []

    if hash_type == 1:
        copy = hashlib.new(algorithm, salt).copy

        def digest(block: Any) -> bytes:
            h = copy()
            h.update(block)
            return h.digest()
    else:
        new = getattr(hashlib, algorithm)  # the OpenSSL constructor itself, not hashlib.new

        def digest(block: Any) -> bytes:
            h = new(block)
            h.update(salt)
            return h.digest()

    def zero_entry() -> bytes:
        if not cache:
            cache.append(digest(zero_block) + pad)
        return cache[0]

    def run(view: Any, start: int, count: int) -> bytearray:
        out = bytearray()
        end = start + count * bs
        if hash_type == 1 and not pad:
            for i in range(start, end, bs):
                if view[i] == 0 and view[i + last] == 0 and bytes(view[i : i + bs]) == zero_block:
                    out += zero_entry()
                    continue
                h = copy()
                h.update(view[i : i + bs])
                out += h.digest()
        else:
            for i in range(start, end, bs):
                if view[i] == 0 and view[i + last] == 0 and bytes(view[i : i + bs]) == zero_block:
                    out += zero_entry()
                    continue
                out += digest(view[i : i + bs])
                out += pad
        return out

    return run


def _hash_task(args: tuple[Any, ...]) -> tuple[int, bytes]:
    return args[0], _hash_range(*args[1:])


def _task_blocks(lay: Layout) -> int:
    """Data blocks per task: about TASK_BYTES, a whole number of leaf hash blocks."""
    return max(1, TASK_BYTES // (lay.data_block_size * lay.per_block)) * lay.per_block


def _nworkers(lay: Layout, workers: int | None) -> int:
    """How many processes to hash with: 1 means in this process."""
    if lay.data_blocks * lay.data_block_size < POOL_MIN_BYTES:
        return 1
    ntasks = -(-lay.data_blocks // _task_blocks(lay))
    return max(1, min(workers if workers is not None else (os.cpu_count() or 1), ntasks))


def _can_fork() -> bool:
    # A bare fork is only safe while this process has no other threads.
    return threading.active_count() == 1


def leaf_digests(path: Path, lay: Layout, workers: int | None) -> Iterator[tuple[int, bytes]]:
    """Yield (first_block, padded digests) for the data in order.

    In this process, or (for callers with threads, who cannot use _fork_leaves) in a
    forkserver pool.
    """
    bs = lay.data_block_size
    step = _task_blocks(lay)
    # A generator, not a list: the task list must not grow with the data either.
    tasks = (
        (b, str(path), lay.data_offset + b * bs, min(step, lay.data_blocks - b), bs,
         lay.algorithm, lay.salt, lay.hash_type, lay.entry_size)
        for b in range(0, lay.data_blocks, step)
    )  # fmt: skip
    nworkers = _nworkers(lay, workers)
    if nworkers <= 1:
        yield from map(_hash_task, tasks)
        return
    import multiprocessing  # only here: it costs start-up time for every command

    with multiprocessing.get_context("forkserver").Pool(nworkers) as pool:
        yield from pool.imap(_hash_task, tasks)


# ---------------------------------------------------------------- leaves in forked children

_TASK = struct.Struct("<Q")
_TASKS_PER_WRITE = select.PIPE_BUF // _TASK.size  # writes up to PIPE_BUF are atomic


def _fork_leaves(data: Path, lay: Layout, nworkers: int, fd: int, check: bool) -> int | None:
    """Hash the leaves in `nworkers` forked children that take task numbers from a pipe.

    check=False: each child writes its leaf hash blocks straight into `fd` (the tree being
    built). check=True: each child compares with the leaf level stored in `fd` and reports
    its first mismatch; returns the first corrupted data block or None. No data flows back
    to the parent, which only hands out task numbers and waits.
    """
    ntasks = -(-lay.data_blocks // _task_blocks(lay))
    tasks_r, tasks_w = os.pipe()
    report_r, report_w = os.pipe()
    pids: list[int] = []
    reports = bytearray()
    finished = False
    try:
        for _ in range(nworkers):
            pid = os.fork()
            if pid == 0:  # child: never returns
                try:
                    os.close(tasks_w)
                    os.close(report_r)
                    _leaf_child(data, lay, fd, tasks_r, report_w, check)
                finally:
                    os._exit(1)
            pids.append(pid)
        os.close(tasks_r)
        os.close(report_w)
        tasks_r = report_w = -1
        with contextlib.suppress(BrokenPipeError):  # every child gave up early
            for i in range(0, ntasks, _TASKS_PER_WRITE):
                todo = range(i, min(i + _TASKS_PER_WRITE, ntasks))
                os.write(tasks_w, b"".join(_TASK.pack(t) for t in todo))
        os.close(tasks_w)
        tasks_w = -1
        while chunk := os.read(report_r, 65536):
            reports += chunk
        finished = True
    finally:
        for f in (tasks_r, tasks_w, report_r, report_w):
            if f >= 0:
                os.close(f)
        if not finished:  # interrupted: stop the children
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
        statuses = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
    bad: int | None = None
    pos = 0
    while pos < len(reports):  # messages: kind byte, u16 length, payload
        kind, length = reports[pos : pos + 1], int.from_bytes(reports[pos + 1 : pos + 3], "little")
        payload = bytes(reports[pos + 3 : pos + 3 + length])
        pos += 3 + length
        if kind == b"E":
            raise InputError(payload.decode(errors="replace"))
        block = _TASK.unpack(payload)[0]
        bad = block if bad is None else min(bad, block)
    if any(statuses):  # a child died without reporting (a signal): its share is missing
        status = next(code for code in statuses if code)
        raise InputError(f"a hashing process for {data} died (exit status {status})")
    return bad


def _report(report_w: int, kind: bytes, payload: bytes) -> None:
    payload = payload[: select.PIPE_BUF - 3]
    os.write(report_w, kind + len(payload).to_bytes(2, "little") + payload)


def _leaf_child(data: Path, lay: Layout, fd: int, tasks_r: int, report_w: int, check: bool) -> None:
    status = 0
    try:
        bs, per, es, hbs = lay.data_block_size, lay.per_block, lay.entry_size, lay.hash_block_size
        step, span = _task_blocks(lay), lay.per_block * lay.entry_size
        while raw := os.read(tasks_r, _TASK.size):
            first = _TASK.unpack(raw)[0] * step
            count = min(step, lay.data_blocks - first)
            digests = _hash_range(
                str(data),
                lay.data_offset + first * bs,
                count,
                bs,
                lay.algorithm,
                lay.salt,
                lay.hash_type,
                es,
            )
            if check:
                stored = _entry_bytes(fd, data, lay, first, count)
                if stored != digests:
                    bad = _first_difference(stored, digests, es)
                    _report(report_w, b"B", _TASK.pack(first + bad))
                    break  # this child's later tasks only hold later blocks
            else:
                blocks = bytearray()
                for j in range(0, len(digests), span):
                    chunk = digests[j : j + span]
                    blocks += chunk
                    blocks += bytes(hbs - len(chunk))
                os.pwrite(fd, blocks, (lay.level_start[0] + first // per) * hbs)
    except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
        message = e.message if isinstance(e, AclComposeError) else f"hashing {data}: {e}"
        with contextlib.suppress(OSError):
            _report(report_w, b"E", message.encode())
        status = 1
    finally:
        os._exit(status)


def _first_difference(a: bytes, b: bytes, size: int) -> int:
    return next(
        i
        for i in range(len(a) // size)
        if a[i * size : (i + 1) * size] != b[i * size : (i + 1) * size]
    )


def write_tree(
    fd: int, where: Path, data: Path, lay: Layout, superblock: bytes | None, workers: int | None
) -> bytes:
    """Hash the data, write superblock and tree into fd; return the root digest."""
    hbs = lay.hash_block_size
    hasher = lay.hasher()
    pad = b"\0" * (lay.entry_size - lay.digest_size)
    span = lay.per_block * lay.entry_size
    # pending[i]: digests of level-i hash blocks not yet packed into a level-(i+1) block.
    pending = [bytearray() for _ in range(lay.levels)]
    written = [0] * lay.levels
    root: bytes | None = None

    def flush(level: int, final: bool) -> None:
        buf = pending[level]
        while len(buf) >= span or (final and buf):
            chunk = bytes(buf[:span])
            del buf[:span]
            block = chunk + bytes(hbs - len(chunk))
            os.pwrite(fd, block, (lay.level_start[level] + written[level]) * hbs)
            written[level] += 1
            digest = hasher(block)
            if level + 1 < lay.levels:
                pending[level + 1] += digest + pad
            else:
                nonlocal root
                root = digest
            if level + 1 < lay.levels and len(pending[level + 1]) >= span:
                flush(level + 1, False)

    try:
        if superblock is not None:
            os.pwrite(fd, superblock, lay.hash_offset)
        if lay.levels == 0:
            # A single data block: its digest is the root, there are no hash blocks.
            digests = b"".join(d for _, d in leaf_digests(data, lay, 1))
            root = digests[: lay.digest_size]
        elif (nworkers := _nworkers(lay, workers)) > 1 and _can_fork():
            # Children write the leaf level into fd; the upper levels come from reading it
            # back (1/128 of the data for sha256 and 4 KiB blocks).
            _fork_leaves(data, lay, nworkers, fd, check=False)
            leaves = _read_blocks(fd, where, lay.level_start[0], lay.level_blocks[0], hbs)
            for block in leaves:
                if lay.levels == 1:
                    root = hasher(block)
                else:
                    pending[1] += hasher(block) + pad
                    flush(1, False)
            for level in range(1, lay.levels):
                flush(level, True)
        else:
            for _, digests in leaf_digests(data, lay, workers):
                pending[0] += digests
                flush(0, False)
            for level in range(lay.levels):
                flush(level, True)
        # veritysetup leaves the hash device at least as long as the tree.
        if os.fstat(fd).st_size < lay.end_byte:
            os.ftruncate(fd, lay.end_byte)
    except OSError as e:
        raise InputError(f"cannot write hash tree to {where}: {e.strerror}") from None
    assert root is not None
    return root


def _corrupt(kind: str, index: int, path: Path, note: str = "") -> VerityError:
    err = VerityError(
        f"{kind} block {index} is corrupted{note}",
        hint=f"{path} does not match the root hash; rebuild it or fetch a trusted copy",
    )
    err.kind, err.block, err.path = kind, index, path  # type: ignore[attr-defined]
    return err


def _read_blocks(fd: int, path: Path, start: int, count: int, bs: int) -> Iterator[memoryview]:
    """Yield `count` blocks of `bs` bytes from block `start`, read in large chunks."""
    per_read = max(1, READ_BYTES // bs)
    buf = bytearray(per_read * bs)
    mv = memoryview(buf)
    done = 0
    while done < count:
        n = min(per_read, count - done)
        got = os.preadv(fd, [mv[: n * bs]], (start + done) * bs)
        if got < n * bs:
            raise _corrupt("hash", start + done + got // bs, path, " (the hash area is truncated)")
        for i in range(n):
            yield mv[i * bs : (i + 1) * bs]
        done += n


def _read_entries(
    fd: int, path: Path, lay: Layout, level: int, first: int, count: int
) -> Iterator[bytes]:
    """Yield stored digests `first`..`first+count-1` of tree level `level` (padded entries)."""
    per, es = lay.per_block, lay.entry_size
    start_block = lay.level_start[level] + first // per
    nblocks = (first + count + per - 1) // per - first // per
    skip = first % per
    left = count
    for block in _read_blocks(fd, path, start_block, nblocks, lay.hash_block_size):
        for j in range(skip, per):
            if not left:
                return
            yield bytes(block[j * es : (j + 1) * es])
            left -= 1
        skip = 0


def verify_tree(data: Path, tree_file: Path, lay: Layout, root: bytes, workers: int | None) -> None:
    hasher = lay.hasher()
    pad = b"\0" * (lay.entry_size - lay.digest_size)
    hbs = lay.hash_block_size
    fd = os.open(tree_file, os.O_RDONLY)
    try:
        if lay.levels == 0:  # one data block, whose hash is the root: nothing to tell apart
            with open(data, "rb") as f:
                f.seek(lay.data_offset)
                block = f.read(lay.data_block_size)
            if hasher(block) != root:
                from acl_compose.trust.verity_diag import root_mismatch

                why = "a wrong root hash or salt, or the block is corrupted"
                raise root_mismatch(root, f"data block 0 of {data}", why)
            return
        top = lay.level_start[-1]
        for block in _read_blocks(fd, tree_file, top, 1, hbs):
            if hasher(block) != root:
                from acl_compose.trust.verity_diag import diagnose_top

                raise diagnose_top(fd, data, tree_file, lay, root, bytes(block))
        # Each level against the digests stored in the (already verified) level above.
        for child in range(lay.levels - 2, -1, -1):
            start = lay.level_start[child]
            blocks = _read_blocks(fd, tree_file, start, lay.level_blocks[child], hbs)
            entries = _read_entries(fd, tree_file, lay, child + 1, 0, lay.level_blocks[child])
            for k, (block, entry) in enumerate(zip(blocks, entries, strict=True)):
                if hasher(block) + pad != entry:
                    raise _corrupt("hash", start + k, tree_file)
        # The data against the leaf level, hashed in worker processes.
        if (nworkers := _nworkers(lay, workers)) > 1 and _can_fork():
            bad = _fork_leaves(data, lay, nworkers, fd, check=True)
            if bad is not None:
                raise _corrupt("data", bad, data)
            return
        for first, digests in leaf_digests(data, lay, workers):
            count = len(digests) // lay.entry_size
            stored = _entry_bytes(fd, tree_file, lay, first, count)
            if stored != digests:
                raise _corrupt(
                    "data", first + _first_difference(stored, digests, lay.entry_size), data
                )
    finally:
        os.close(fd)


def _entry_bytes(fd: int, path: Path, lay: Layout, first: int, count: int) -> bytes:
    """Stored leaf digests `first`..`first+count-1` as one byte string (padded entries)."""
    per, es, hbs = lay.per_block, lay.entry_size, lay.hash_block_size
    b0, b1 = first // per, (first + count - 1) // per + 1
    raw = os.pread(fd, (b1 - b0) * hbs, (lay.level_start[0] + b0) * hbs)
    if len(raw) < (b1 - b0) * hbs:
        raise _corrupt(
            "hash", lay.level_start[0] + b0 + len(raw) // hbs, path, " (the hash area is truncated)"
        )
    if per * es != hbs:  # hash type 0 leaves unused bytes at the end of each block
        raw = b"".join(raw[i * hbs : i * hbs + per * es] for i in range(b1 - b0))
    off = (first % per) * es
    return raw[off : off + count * es]
