"""util.OutputDir: the one output-folder rule every `-o/--output DIR` follows."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.util import OUTPUT_RECORD, OutputDir


def _write(stage: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        (stage / rel).write_text(text)


def _tree(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): p.read_text()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != OUTPUT_RECORD
    }


def test_missing_folder_is_created_with_only_our_files(tmp_path: Path) -> None:
    out = OutputDir(tmp_path / "a" / "out", "cmd")
    with out.staging() as stage:
        _write(stage, {"x.raw": "1", "sub/y": "2"})
        assert not (tmp_path / "a" / "out").exists()  # nothing there until it succeeded
    assert _tree(tmp_path / "a" / "out") == {"x.raw": "1", "sub/y": "2"}
    record = json.loads((tmp_path / "a" / "out" / OUTPUT_RECORD).read_text())
    assert record == {"commands": {"cmd": ["sub/y", "x.raw"]}}
    assert oct((tmp_path / "a" / "out").stat().st_mode & 0o777) != oct(0o700)  # not mkdtemp's
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["out"]  # no staging left


def test_a_failure_leaves_the_folder_as_it_was(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    out = OutputDir(d, "cmd", force=True)
    with pytest.raises(RuntimeError), out.staging() as stage:
        _write(stage, {"x.raw": "1"})
        raise RuntimeError("boom")
    assert _tree(d) == {"thesis.txt": "years of work"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_empty_folder_is_refused_without_force(tmp_path: Path) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    with pytest.raises(InputError, match="is not empty and holds no earlier output") as e:
        OutputDir(d, "cmd")
    assert "never replaced or deleted" in e.value.hint
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is not a folder"):
        OutputDir(tmp_path / "file", "cmd", force=True)


def test_force_adds_beside_but_never_replaces_a_foreign_file(tmp_path: Path) -> None:
    d = tmp_path / "precious"
    d.mkdir()
    (d / "thesis.txt").write_text("years of work")
    (d / "x.raw").write_text("the user's own x.raw")
    out = OutputDir(d, "cmd", force=True)
    with pytest.raises(InputError, match="x.raw exists and was not written by"):
        out.check(["x.raw"])
    with pytest.raises(InputError, match="x.raw exists and was not written by"):
        with out.staging() as stage:
            _write(stage, {"new.raw": "n", "x.raw": "ours"})
    assert _tree(d) == {"thesis.txt": "years of work", "x.raw": "the user's own x.raw"}
    with out.staging() as stage:
        _write(stage, {"new.raw": "n"})
    assert _tree(d) == {
        "new.raw": "n",
        "thesis.txt": "years of work",
        "x.raw": "the user's own x.raw",
    }


def test_previous_output_is_replaced_file_by_file(tmp_path: Path) -> None:
    d = tmp_path / "out"
    with OutputDir(d, "cmd", replace=True).staging() as stage:
        _write(stage, {"a-1.bin": "old", "release.json": "1", "v1/f": "old"})
    (d / "thesis.txt").write_text("mine")  # the user adds a file later
    (d / "v1" / "notes").write_text("mine too")
    with OutputDir(d, "cmd", replace=True).staging(last=["release.json"]) as stage:
        _write(stage, {"a-2.bin": "new", "release.json": "2"})
    # The previous output's files are gone or replaced; the user's files stay.
    assert _tree(d) == {"a-2.bin": "new", "release.json": "2", "thesis.txt": "mine",
                        "v1/notes": "mine too"}  # fmt: skip
    # Accumulating commands keep earlier files.
    with OutputDir(d, "cmd").staging() as stage:
        _write(stage, {"b.bin": "b"})
    assert set(_tree(d)) == {"a-2.bin", "b.bin", "release.json", "thesis.txt", "v1/notes"}
    record = json.loads((d / OUTPUT_RECORD).read_text())["commands"]["cmd"]
    assert record == ["a-2.bin", "b.bin", "release.json"]


def test_another_commands_output_is_not_ours(tmp_path: Path) -> None:
    d = tmp_path / "out"
    with OutputDir(d, "fetch").staging() as stage:
        _write(stage, {"version.txt": "v"})
    with pytest.raises(InputError, match="no earlier output of `acl-compose sysext build`"):
        OutputDir(d, "sysext build")
    with OutputDir(d, "sysext build", force=True).staging() as stage:
        _write(stage, {"x.raw": "x"})
    records = json.loads((d / OUTPUT_RECORD).read_text())["commands"]
    assert records == {"fetch": ["version.txt"], "sysext build": ["x.raw"]}
    OutputDir(d, "fetch")  # still recognised as fetch's output too


def test_previous_without_a_record_and_stale_removal(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    for name in ("release.json", "r-1.bin", "thesis.txt"):
        (d / name).write_text(name)

    def previous(path: Path) -> set[str]:
        return {"release.json", "r-1.bin"} if (path / "release.json").exists() else set()

    with OutputDir(d, "compose", replace=True, previous=previous).staging() as stage:
        _write(stage, {"release.json": "new", "r-2.bin": "new"})
    assert _tree(d) == {"release.json": "new", "r-2.bin": "new", "thesis.txt": "thesis.txt"}
    assert not (d / OUTPUT_RECORD).exists()  # release.json is its own record
    # `remove`: a stale side file we wrote goes; a user's file of that name is refused.
    with OutputDir(d / "s", "sysext build").staging() as stage:
        _write(stage, {"x.raw": "1", "x.roothash.p7s": "sig"})
    with OutputDir(d / "s", "sysext build").staging(remove=["x.roothash.p7s"]) as stage:
        _write(stage, {"x.raw": "2"})
    assert _tree(d / "s") == {"x.raw": "2"}


def test_symlinked_or_file_parents_are_conflicts(tmp_path: Path) -> None:
    d = tmp_path / "out"
    d.mkdir()
    (tmp_path / "elsewhere").mkdir()
    os.symlink(tmp_path / "elsewhere", d / "9999.2.0")
    out = OutputDir(d, "testbed build", force=True)
    with pytest.raises(InputError, match="9999.2.0 exists and was not written"):
        out.check(["9999.2.0/version.txt"])
    assert list((tmp_path / "elsewhere").iterdir()) == []
