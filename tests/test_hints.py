"""Every error, hint and warning names only options that the command printing it has.

Three checks over the package's source (AST), so a new message cannot regress this:
1. library code (everything but the click layer) writes no literal `--option` into an error,
   hint or warning: it names options through `ui.opt(flag, otherwise)`;
2. every `ui.opt(...)` call, rendered for every command, names only that command's options
   (its `otherwise` words and the command's `ui.spelled` aliases included);
3. messages in a command module name only options of the command whose function raises them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import click
import pytest

from acl_compose import ui
from tests.cli_tools import all_commands
from tests.conftest import REPO

PACKAGE = REPO / "acl_compose"
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
QUOTED = re.compile(r"`[^`]*`")  # `gpg --show-keys`, `acl-compose keys generate --rsa`: commands
# A module reached by one command only, whose wording is not edited: the testbed's files key
# its build cache (an edit rebuilds it for everyone), and `testbed build` has --version.
ALLOWED = {("acl_compose/testbed/build.py", "--version")}
# Calls whose string arguments reach the user as an error, hint or warning.
MESSAGE_CALL = re.compile(
    r"(Error|Exception|_Fail|^_?err|^_?error|^_corrupt|^root_mismatch|^warn|^_fail|^fail)$"
)
CLICK_LAYER = {"cli.py", "commands"}


def _callee(node: ast.Call) -> str:
    f = node.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def _strings(node: ast.AST) -> list[str]:
    """String constants in `node`, not descending into `opt(...)` calls (their flag is
    rendered per command, checked by test 2)."""
    out: list[str] = []

    def walk(n: ast.AST) -> None:
        if isinstance(n, ast.Call) and _callee(n) == "opt":
            return
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append(n.value)
        for child in ast.iter_child_nodes(n):
            walk(child)

    walk(node)
    return out


def _messages(tree: ast.AST) -> list[tuple[int, str, str]]:
    """(line, enclosing function, text) of every string that becomes a message."""
    found: list[tuple[int, str, str]] = []

    def visit(node: ast.AST, func: str) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            func = node.name
        if isinstance(node, ast.Call) and MESSAGE_CALL.search(_callee(node)):
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                found.extend((node.lineno, func, s) for s in _strings(arg))
        elif isinstance(node, ast.keyword) and node.arg == "hint":
            found.extend((node.value.lineno, func, s) for s in _strings(node.value))
        elif isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id in ("hint", "why") for t in node.targets
        ):
            found.extend((node.lineno, func, s) for s in _strings(node.value))
        for child in ast.iter_child_nodes(node):
            visit(child, func)

    visit(tree, "")
    return found


def _sources() -> list[tuple[Path, ast.AST]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(PACKAGE.rglob("*.py"))]


def _is_click_layer(path: Path) -> bool:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] in CLICK_LAYER


def test_library_messages_name_no_literal_options() -> None:
    bad = []
    for path, tree in _sources():
        if _is_click_layer(path):
            continue
        rel = str(path.relative_to(REPO))
        for line, _func, text in _messages(tree):
            for o in OPTION.findall(QUOTED.sub("", text)):
                if (rel, o) not in ALLOWED:
                    bad.append(f"{rel}:{line}: {o} in {text!r}")
    assert not bad, "name options with ui.opt(flag, otherwise):\n" + "\n".join(bad)


def _opt_calls() -> list[tuple[str, str, str]]:
    calls = []
    for path, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _callee(node) == "opt":
                args = node.args
                assert len(args) == 2 and all(isinstance(a, ast.Constant) for a in args), (
                    f"{path}:{node.lineno}: ui.opt takes two literal strings"
                )
                calls.append((f"{path.relative_to(REPO)}:{node.lineno}", args[0].value,
                              args[1].value))  # fmt: skip
    return calls


def test_opt_calls_exist_and_are_literal() -> None:
    calls = _opt_calls()
    assert len(calls) >= 10  # the mechanism is in use, so test 2 is not vacuous
    for where, flag, otherwise in calls:
        assert flag.startswith("--"), where
        assert not OPTION.search(otherwise), f"{where}: `otherwise` names an option"


@pytest.mark.parametrize("name,command", all_commands(), ids=lambda v: str(v))
def test_every_opt_renders_an_option_the_command_has(name: str, command: click.Command) -> None:
    have = ui.option_names(command)
    for where, flag, otherwise in _opt_calls():
        text = ui.render_opt(command, flag, otherwise)
        missing = [o for o in OPTION.findall(text) if o not in have]
        assert not missing, f"{name}: {where} renders {text!r}, naming {missing}"


def test_opt_renders_per_command() -> None:
    """The rendering itself: the flag where the option exists, the command's own spelling
    where it has one, else the neutral words."""
    commands = dict(all_commands())
    fetch, compose = commands["acl-compose fetch"], commands["acl-compose compose"]
    sysext_build = commands["acl-compose sysext build"]
    assert ui.render_opt(fetch, "--release VERSION", "the release") == "--release VERSION"
    assert ui.render_opt(compose, "--release VERSION", "the release") == (
        "base.release in the manifest"
    )
    assert ui.render_opt(sysext_build, "--release VERSION", "the release") == "the release"
    with click.Context(fetch):
        assert ui.opt("--offline", "offline mode") == "--offline"
    with click.Context(commands["acl-compose sysext check"]):
        assert ui.opt("--offline", "offline mode") == "offline mode"
    assert ui.opt("--offline", "offline mode") == "--offline"  # no command: the CLI spelling


def test_command_messages_name_their_own_options() -> None:
    by_callback: dict[tuple[str, str], set[str]] = {}
    for _name, cmd in all_commands():
        cb = cmd.callback
        while cb is not None and hasattr(cb, "__wrapped__"):
            cb = cb.__wrapped__
        if cb is not None:
            key = (cb.__module__, cb.__name__)
            by_callback.setdefault(key, set()).update(ui.option_names(cmd))
    bad = []
    for path, tree in _sources():
        if not _is_click_layer(path):
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for line, func, text in _messages(tree):
            have = by_callback.get((module, func))
            for o in OPTION.findall(QUOTED.sub("", text)):
                if have is None or o not in have:
                    bad.append(f"{path.relative_to(REPO)}:{line} ({func}): {o} in {text!r}")
    assert not bad, "\n".join(bad)


def test_the_scanner_is_not_vacuous(tmp_path: Path) -> None:
    tree = ast.parse(
        "def f():\n"
        "    raise InputError('x', hint='pass --files-dir DIR')\n"
        '    warn(f\'--cert was given {opt("--key", "a key")}\')\n'
    )
    texts = [t for _, _, t in _messages(tree)]
    assert "pass --files-dir DIR" in texts and "--key" not in " ".join(texts)
    assert any("--cert" in t for t in texts)
