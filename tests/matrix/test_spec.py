"""MATRIX.yaml: cross product, exclude/include, limits, and errors naming file:line."""

from __future__ import annotations

from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.matrix import load_matrix
from tests.conftest import run_cli


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "a.img").write_bytes(b"a")
    (tmp_path / "suite").mkdir()
    (tmp_path / "suite" / "test_x.py").write_text("def test_x():\n    pass\n")
    return tmp_path


def write(d: Path, text: str) -> Path:
    p = d / "matrix.yaml"
    p.write_text(text)
    return p


BASE = """\
images:
  - {name: a, path: a.img}
  - {name: b, url: "http://127.0.0.1:1/b.img", sha256: %s}
firmwares: [uefi, bios]
platforms:
  - {name: small, memory: 512, cpus: 1}
suites:
  - {name: s, path: suite, transport: console}
timeout: 30
retries: 2
""" % ("ab" * 32)


def test_cross_product_exclude_include(files: Path) -> None:
    text = (
        BASE
        + """\
exclude:
  - {image: b, firmware: bios}
include:
  - {image: a, firmware: uefi, timeout: 99}
"""
    )
    m = load_matrix(write(files, text))
    ids = [c.id for c in m.cells]
    assert ids == ["a.bios.small.none.s", "a.uefi.small.none.s", "b.uefi.small.none.s"]
    by = m.by_id()
    assert by["a.uefi.small.none.s"].timeout == 99
    assert by["a.bios.small.none.s"].timeout == 30 and by["a.bios.small.none.s"].retries == 2
    assert by["a.uefi.small.none.s"].image["location"] == str(files / "a.img")
    assert by["b.uefi.small.none.s"].platform == {
        "name": "small",
        "memory": 512,
        "cpus": 1,
        "accel": "auto",
    }
    # The digest pins the cells: same file -> same digest; a changed limit -> another.
    assert load_matrix(files / "matrix.yaml").digest == m.digest
    write(files, text.replace("timeout: 99", "timeout: 98"))
    assert load_matrix(files / "matrix.yaml").digest != m.digest


def test_include_adds_a_cell_outside_the_product(files: Path) -> None:
    text = BASE.replace("firmwares: [uefi, bios]", "firmwares: [uefi]") + (
        "exclude:\n  - {image: b}\ninclude:\n  - {image: b, retries: 0}\n"
    )
    m = load_matrix(write(files, text))
    assert [c.id for c in m.cells] == ["a.uefi.small.none.s", "b.uefi.small.none.s"]
    assert m.by_id()["b.uefi.small.none.s"].retries == 0


@pytest.mark.parametrize(
    ("edit", "line", "message"),
    [
        (lambda t: t.replace("memory: 512", "memroy: 512"), 6, "platforms[0].memroy: unknown key"),
        (lambda t: t.replace(", sha256: " + "ab" * 32, ""), 3, "needs its sha256"),
        (lambda t: t.replace("path: a.img", "path: nope.img"), 2, "does not exist"),
        (lambda t: t.replace("uefi, bios", "uefi, efi"), 4, "firmwares"),
        (lambda t: t.replace("transport: console", "transport: telnet"), 8, "transport"),
        (lambda t: t + "exclude:\n  - {image: c}\n", 12, "no image named 'c'"),
        (lambda t: t + "retries: 1\n", 11, "duplicate"),
        (lambda t: t.replace("timeout: 30", "timeout: -1"), 9, "non-negative"),
        (lambda t: t.replace("name: b", "name: a"), 3, "duplicate name 'a'"),
    ],
)
def test_errors_name_file_and_line(files: Path, edit, line: int, message: str) -> None:
    path = write(files, edit(BASE))
    with pytest.raises(InputError) as e:
        load_matrix(path)
    assert f"{path}:{line}:" in e.value.message and message in e.value.message, e.value.message


def test_cli_reports_a_bad_matrix_without_traceback(files: Path) -> None:
    path = write(files, BASE.replace("memory: 512", "memory: 64"))
    proc = run_cli("matrix", "run", path, "-o", files / "out", check=False)
    assert proc.returncode == 1
    assert proc.stderr.startswith(f"error: {path}:6: platforms[0].memory: expected an integer")
    assert "hint:" in proc.stderr and "Traceback" not in proc.stderr
    assert not (files / "out").exists()  # nothing written before the matrix is valid
    proc = run_cli("matrix", "run", path, "-o", files / "out", "--cluster", "k8s:3", check=False)
    assert proc.returncode == 1 and "unknown cluster" in proc.stderr
