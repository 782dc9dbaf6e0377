"""The package's architecture, checked: data flows one way through the stage subpackages.

fetch -> image -> sysext | ignition -> compose -> boot, standing on a floor (trust, errors,
run, ui, util, yamlpos) that imports no stage. The click layer (cli, commands) may import any
stage but only through its package API; nothing in the product imports the testbed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "acl_compose"
FLOOR = {"__init__", "errors", "run", "ui", "util", "yamlpos", "trust"}
# Stage -> rank; a module may import its own stage, the floor, and lower ranks only.
STAGES = {"fetch": 1, "image": 2, "sysext": 3, "ignition": 3, "compose": 4, "boot": 5,
          "provenance": 5, "matrix": 6}  # fmt: skip
TOP = {"__main__", "cli", "commands"}  # the click layer, above every stage
MAX_LINES = 600


def _modules() -> list[tuple[str, Path]]:
    return sorted(
        (".".join(p.relative_to(REPO).with_suffix("").parts), p) for p in PACKAGE.rglob("*.py")
    )


def _group(module: str) -> str:
    """acl_compose.sysext.builder -> sysext; acl_compose.util -> util."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _imports(path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import in the file, nested ones included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([target] if target else []))
            out.append((node.lineno, target, [a.name for a in node.names]))
    return [i for i in out if i[1] == "acl_compose" or i[1].startswith("acl_compose.")]


def _targets(imported: str, names: list[str]) -> list[str]:
    """The acl_compose groups an import reaches (`from acl_compose import fetch` -> fetch)."""
    if imported == "acl_compose":
        return [n if n in STAGES or n in FLOOR or n in TOP or n == "testbed" else "__init__"
                for n in names]  # fmt: skip
    return [_group(imported)]


def _arrow_allowed(source: str, target: str) -> bool:
    if source == target or target in FLOOR:
        return True
    if source == "testbed":  # builds a release: may use any stage below compose
        return target in STAGES and STAGES[target] < STAGES["compose"]
    if target == "testbed":
        return source in TOP
    if source in FLOOR:
        return False
    if source in TOP:
        return True
    if target in TOP:
        return False
    return STAGES[target] < STAGES[source]


def test_no_stage_imports_a_later_one() -> None:
    bad = []
    for module, path in _modules():
        source = _group(module)
        for line, imported, names in _imports(path, module):
            for target in _targets(imported, names):
                if not _arrow_allowed(source, target):
                    bad.append(f"{path.relative_to(REPO)}:{line}: {source} -> {target}")
    assert not bad, "imports against the data flow:\n" + "\n".join(bad)


def test_the_checker_itself_catches_a_backward_arrow(tmp_path: Path) -> None:
    # A fetch module importing compose must be flagged: the rule above is not vacuous.
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from acl_compose.compose import compose\n")
    imports = _imports(f, "acl_compose.fetch.x")
    assert imports == [(2, "acl_compose.compose", ["compose"])]
    assert not _arrow_allowed("fetch", _targets(*imports[0][1:])[0])
    assert not _arrow_allowed("trust", "fetch")
    assert not _arrow_allowed("compose", "testbed")
    assert not _arrow_allowed("sysext", "ignition")
    assert _arrow_allowed("boot", "ignition")


def test_commands_use_stage_apis_not_inner_modules() -> None:
    bad = []
    for module, path in _modules():
        if _group(module) not in TOP:
            continue
        for line, imported, names in _imports(path, module):
            parts = imported.split(".")
            if len(parts) > 2 and parts[1] in STAGES | {"trust": 0}:
                bad.append(f"{path.relative_to(REPO)}:{line}: imports {imported}")
            elif len(parts) == 2 and parts[1] in STAGES | {"trust": 0}:
                api = importlib.import_module(imported).__all__
                bad += [
                    f"{path.relative_to(REPO)}:{line}: {imported}.{n} is not in its API"
                    for n in names
                    if n not in api
                ]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("stage", sorted(STAGES) + ["trust", "testbed"])
def test_each_stage_says_what_it_takes_and_gives(stage: str) -> None:
    mod = importlib.import_module(f"acl_compose.{stage}")
    assert mod.__doc__ and len(mod.__doc__.strip()) > 40
    for name in getattr(mod, "__all__", []):
        assert getattr(mod, name) is not None  # every exported name resolves


def test_no_module_over_600_lines() -> None:
    long = [
        f"{p.relative_to(REPO)}: {n}"
        for _, p in _modules()
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "split these by concern:\n" + "\n".join(long)


def test_no_test_file_over_600_lines() -> None:
    """The same limit for the tests (and the guest suites): split by the module they test,
    shared fixtures in the folder's conftest.py."""
    files = [p for root in ("tests", "qemu-tests") for p in sorted((REPO / root).rglob("*.py"))]
    assert len(files) > 50  # the walk found the suites
    long = [
        f"{p.relative_to(REPO)}: {n}"
        for p in files
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    ]
    assert not long, "split these by concern:\n" + "\n".join(long)


def test_tests_are_self_contained() -> None:
    """A fresh clone runs its tests: nothing reads the workspace's shared folder (reference
    data lives in tests/data/reference/, with its origins in the README there)."""
    needles = ("../" + "shared", "/work/" + "shared", "shared/" + "reference")
    roots = [REPO / "tests", REPO / "qemu-tests", REPO / "examples", REPO / "acl_compose"]
    files = [p for r in roots for p in r.rglob("*") if p.is_file() and p.suffix != ".pyc"]
    files += [REPO / "Makefile", REPO / ".ci" / "run", REPO / "setup.cfg"]
    bad = []
    for path in files:
        text = path.read_bytes().decode(errors="replace")
        bad += [f"{path.relative_to(REPO)}: {n}" for n in needles if n in text]
    assert not bad, "\n".join(bad)
    for name in ("Flatcar_Image_Signing_Key.asc", "flatcar-disk_layout.json", "README.md"):
        assert (REPO / "tests" / "data" / "reference" / name).is_file(), name
