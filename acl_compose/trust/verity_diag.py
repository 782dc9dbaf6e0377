"""Why a hash tree does not verify against a root hash: a wrong root hash (or salt), or a
damaged top block. Only the failure path of verity_tree.verify_tree comes here."""

from __future__ import annotations

from pathlib import Path

from acl_compose.trust.verity_tree import Layout, VerityError, _corrupt, _read_blocks


class RootHashMismatch(VerityError):
    """The root hash given is not the tree's: usually a mistyped hash or a wrong salt."""

    hint = "check the root hash (and the salt and layout options when there is no superblock)"


def root_mismatch(root: bytes, what: str, why: str) -> RootHashMismatch:
    err = RootHashMismatch(f"root hash {root.hex()} does not match {what} ({why})")
    err.kind, err.block, err.path = "root", None, None  # type: ignore[attr-defined]
    return err


def _rebuild_top(fd: int, data: Path, tree_file: Path, lay: Layout) -> bytes:
    """The top hash block as the blocks below it say it should be (at most one block of
    children: a few hundred KiB to read)."""
    hasher = lay.hasher()
    pad = b"\0" * (lay.entry_size - lay.digest_size)
    if lay.levels == 1:
        with open(data, "rb") as f:
            children = [f.read(lay.data_block_size) for _ in range(lay.data_blocks)]
    else:
        below = lay.levels - 2
        children = [
            bytes(b)
            for b in _read_blocks(
                fd, tree_file, lay.level_start[below], lay.level_blocks[below], lay.hash_block_size
            )
        ]
    return b"".join(hasher(c) + pad for c in children).ljust(lay.hash_block_size, b"\0")


def diagnose_top(fd: int, data: Path, tree_file: Path, lay: Layout, root: bytes,
                  stored: bytes) -> VerityError:  # fmt: skip
    """The top block does not hash to `root`: a wrong root hash, or a damaged top block?"""
    hasher = lay.hasher()
    rebuilt = _rebuild_top(fd, data, tree_file, lay)
    top = lay.level_start[-1]
    if hasher(rebuilt) == root:  # the blocks below agree with the root hash: the top is damaged
        return _corrupt("hash", top, tree_file)
    if rebuilt == stored:
        return root_mismatch(root, f"the hash tree of {data}",
                              "the tree and the data agree with each other: likely a wrong "
                              "root hash, or a wrong salt")  # fmt: skip
    return root_mismatch(root, f"the hash tree of {data}",
                          "nor does the tree match its own blocks: likely a wrong salt, hash "
                          "algorithm, hash type or block size, or a damaged tree")  # fmt: skip
