"""yamlpos: safe_load's data plus the position of every key and item, bad keys refused."""

import os
import time

import pytest
import yaml

from acl_compose import yamlpos
from tests.yaml_docs import bomb

DOC = """\
# a comment first
top:
  name: web
  files:
    - path: /a
      mode: 0644
    - {path: /b, mode: 420}
  flow: [x, 'y']
"""


def test_data_is_what_safe_load_returns():
    loc = yamlpos.load(DOC)
    assert loc.data == yaml.safe_load(DOC)
    assert type(loc.data["top"]) is dict and type(loc.data["top"]["files"]) is list


def test_positions_of_keys_and_items_in_nested_maps_and_lists():
    loc = yamlpos.load(DOC)
    assert loc.position(("top",)) == (2, 1)
    assert loc.position(("top", "name")) == (3, 3)
    assert loc.position(("top", "files", 0)) == (5, 7)
    assert loc.position(("top", "files", 0, "mode")) == (6, 7)
    assert loc.position(("top", "files", 1)) == (7, 7)
    assert loc.position(("top", "files", 1, "mode")) == (7, 18)
    assert loc.position(("top", "flow", 1)) == (8, 13)
    assert loc.line(("top", "files", 0, "path")) == 5
    assert loc.line(("top", "nothing"), default=99) == 99
    with pytest.raises(KeyError):
        loc.position(("top", "nothing"))
    # Where values begin: the document after the comment, a block mapping at its first key.
    assert loc.start(()) == (2, 1)
    assert loc.start(("top",)) == (3, 3)
    assert loc.start(("top", "name")) == (3, 9)


def test_raw_scalar_text_tells_octal_from_decimal():
    loc = yamlpos.load(DOC)
    assert loc.data["top"]["files"][0]["mode"] == 0o644
    assert loc.raw(("top", "files", 0, "mode")) == "0644"
    assert loc.raw(("top", "files", 1, "mode")) == "420"
    assert loc.raw(("top", "flow", 0)) == "x"
    assert loc.raw(("top", "flow", 1)) is None  # quoted: no source text to read "as written"
    assert loc.raw(("top", "files")) is None  # not a scalar


@pytest.mark.parametrize(
    "text,problem,line",
    [
        ("a: 1\nb:\n  c: 1\n  c: 2\n", "duplicate key 'c'", 4),
        ("x: {k: 1, k: 1}\n", "duplicate key 'k'", 1),
        ("a: 1\n3: x\n", "keys must be strings", 2),
        ("a: 1\n? [x]\n: y\n", "keys must be strings", 2),
        ("~: x\n", "keys must be strings", 1),
    ],
)
def test_duplicate_and_non_string_keys_refused(text, problem, line):
    with pytest.raises(yamlpos.BadKeyError) as exc:
        yamlpos.load(text)
    assert exc.value.problem == problem
    assert exc.value.problem_mark.line + 1 == line
    assert isinstance(exc.value, yaml.YAMLError)  # callers' YAML error handling catches it


@pytest.mark.parametrize(
    "text",
    [
        "x: !!python/object/apply:os.system ['touch /tmp/yamlpos-pwned']\n",
        "x: !!python/object:collections.OrderedDict {}\n",
        "x: !!python/name:os.system\n",
    ],
)
def test_python_tags_are_refused(text):
    with pytest.raises(
        yaml.constructor.ConstructorError, match="could not determine a constructor"
    ):
        yamlpos.load(text)


def test_merge_keys_and_aliases_as_safe_load():
    text = "base: &b {mode: 0644, path: /a}\nfile:\n  <<: *b\n  path: /b\nsame: *b\n"
    loc = yamlpos.load(text)
    assert loc.data == yaml.safe_load(text)
    assert loc.data["file"] == {"mode": 0o644, "path": "/b"}  # own keys override merged ones
    assert loc.position(("file", "path")) == (4, 3)
    assert loc.position(("file", "mode")) == (1, 11)  # merged: where the anchor wrote it
    assert loc.position(("same", "path")) == (1, 23)


def test_recursive_alias_refused_and_bad_yaml_raises_yaml_errors():
    with pytest.raises(yaml.constructor.ConstructorError, match="recursive"):
        yamlpos.load("a: &a\n  b: *a\n")
    with pytest.raises(yaml.MarkedYAMLError) as exc:
        yamlpos.load("a: [1,\n")
    assert exc.value.problem_mark.line == 1


def test_empty_document_and_scalar_root():
    assert yamlpos.load("").data is None
    assert yamlpos.load("# only a comment\n").data is None
    loc = yamlpos.load("--- 017\n")
    assert loc.data == 15 and loc.raw(()) == "017"


# --- limits: every YAML input is bounded here, refusals located at the event over the limit ---


def refused(text: str) -> tuple[str, tuple[int, int]]:
    with pytest.raises(yamlpos.LimitError) as exc:
        yamlpos.load(text)
    assert isinstance(exc.value, yaml.MarkedYAMLError)  # callers' YAML error handling catches it
    mark = exc.value.problem_mark
    return exc.value.problem, (mark.line + 1, mark.column + 1)


def test_alias_bomb_refused_at_the_alias_that_crosses_the_node_budget():
    problem, where = refused(bomb(9))
    assert problem == f"aliases expand the document to more than {yamlpos.MAX_NODES} nodes"
    # Through line 4: 8307 nodes (d expands to 7381); line 5's second *d crosses 20000.
    assert where == (5, 12)


def test_aliases_within_the_budget_expand_as_safe_load():
    text = bomb(4)  # 9**4 = 6561 leaves
    assert yamlpos.load(text).data == yaml.safe_load(text)


@pytest.mark.parametrize(
    "text,where",
    [
        # The scanner refuses the 65th flow level (before its look-ahead grows with depth) ...
        ("x: " + "[" * 10_000 + "]" * 10_000 + "\n", (1, 4 + yamlpos.MAX_DEPTH)),
        # ... the composer the 65th level of nodes, here the 64th bracket below the top map.
        ("x: " + "[" * 64 + "]" * 64 + "\n", (1, 4 + yamlpos.MAX_DEPTH - 1)),
        ("- " * 10_000 + "a\n", (1, 2 * yamlpos.MAX_DEPTH + 1)),
        ("".join("  " * i + f"k{i}:\n" for i in range(100)), (yamlpos.MAX_DEPTH, 127)),
    ],
    ids=["flow", "flow-composed", "block-sequence", "block-mapping"],
)
def test_deep_nesting_refused_before_composing_recurses(text, where):
    problem, at = refused(text)
    assert problem == f"document nested deeper than {yamlpos.MAX_DEPTH} levels"
    assert at == where


def test_depth_counts_what_aliases_expand_to():
    # Each anchor nests the previous one a level deeper: shallow as written, deep as data.
    deep = "[" * 40 + "]" * 40
    text = f"a0: &a0 {deep}\n" + "".join(f"a{i}: &a{i} [[*a{i - 1}]]\n" for i in range(1, 20))
    problem, where = refused(text)
    assert problem == f"aliases nest the document deeper than {yamlpos.MAX_DEPTH} levels"
    # a_i is 40 + 2i levels tall; *a11 sits 3 levels down in a12 (line 13): 3 + 62 > 64.
    assert where == (13, 13)
    # A long chain of merge keys nests the same way (and SafeConstructor recurses along it).
    chain = "m0: &m0 {a: 0}\n" + "".join(
        f"m{i}: &m{i} {{<<: *m{i - 1}, a: {i}}}\n" for i in range(1, 5000)
    )
    problem, _ = refused(chain)
    assert "deeper than" in problem


def test_node_count_bounded_without_aliases():
    text = "x: [" + ", ".join(["1"] * (yamlpos.MAX_NODES + 10)) + "]\n"
    problem, (line, _) = refused(text)
    assert problem == f"document has more than {yamlpos.MAX_NODES} nodes"
    assert line == 1


def test_scalar_size_bounded_and_document_size_bounded():
    text = "a: 1\nb: " + "x" * (yamlpos.MAX_SCALAR + 1) + "\n"
    assert refused(text) == (f"scalar longer than {yamlpos.MAX_SCALAR} characters", (2, 4))
    ok = "b: " + "x" * yamlpos.MAX_SCALAR + "\n"
    assert len(yamlpos.load(ok).data["b"]) == yamlpos.MAX_SCALAR
    lines = "k: v\n" * (yamlpos.MAX_BYTES // 5) + "tail: here\n"
    problem, where = refused(lines)
    assert problem == f"document larger than {yamlpos.MAX_BYTES} characters"
    assert where == (yamlpos.MAX_BYTES // 5 + 1, 1 + yamlpos.MAX_BYTES % 5)


def test_read_stops_at_the_size_limit_and_locates_bad_utf8(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:  # 100 MB, sparse: only read() as far as the limit is paid for
        f.write(b"x: ")
        f.truncate(100 << 20)
    with pytest.raises(yamlpos.LimitError) as exc:
        yamlpos.read(big)
    msg = yamlpos.describe(exc.value, "big.yaml")
    assert (
        msg == f"big.yaml:1:{yamlpos.MAX_BYTES + 1}: document larger than {yamlpos.MAX_BYTES} bytes"
    )
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(yaml.MarkedYAMLError) as exc2:
        yamlpos.read(bad)
    assert yamlpos.describe(exc2.value, "bad.yaml") == (
        "bad.yaml:2:7: invalid YAML: not UTF-8 text (byte 0xe9)"
    )
    good = tmp_path / "good.yaml"
    good.write_text("a: é\n")
    assert yamlpos.load(yamlpos.read(good)).data == {"a": "é"}


def test_describe_locates_every_kind_of_error():
    cases = {
        "a: [1,\n": "f.yaml:2:1: invalid YAML: expected the node content",
        "a: 1\na: 2\n": "f.yaml:2:1: duplicate key 'a'",
        "a: *nowhere\n": "f.yaml:1:4: invalid YAML: found undefined alias 'nowhere'",
        bomb(): "f.yaml:5:12: aliases expand the document",
        "a: 1\nb: x\x00y\n": "f.yaml:2:5: invalid YAML: character '\\x00' is not allowed",
    }
    for text, want in cases.items():
        with pytest.raises(yaml.YAMLError) as exc:
            yamlpos.load(text)
        assert yamlpos.describe(exc.value, "f.yaml").startswith(want)


# Every module reads YAML through yamlpos, so the limits above cover every YAML input.
_LOADERS = {
    "load", "safe_load", "full_load", "unsafe_load", "load_all", "safe_load_all",
    "full_load_all", "unsafe_load_all", "compose", "compose_all", "parse", "scan",
    "Loader", "SafeLoader", "FullLoader", "UnsafeLoader", "BaseLoader",
    "CLoader", "CSafeLoader", "CFullLoader", "CUnsafeLoader", "CBaseLoader",
}  # fmt: skip


def test_no_module_reads_yaml_except_through_yamlpos():
    import ast

    from tests.conftest import REPO

    offenders = []
    for path in sorted((REPO / "acl_compose").rglob("*.py")):
        if path.name == "yamlpos.py" and path.parent.name == "acl_compose":
            continue
        tree = ast.parse(path.read_text(), str(path))
        aliases = {"yaml"}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name for a in node.names if a.name == "yaml"}
        for node in ast.walk(tree):
            rel = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "yaml":
                offenders += [f"{rel}: from {node.module} import {a.name}" for a in node.names]
            elif (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr in _LOADERS
            ):
                offenders.append(f"{rel}: {node.value.id}.{node.attr}")
    assert not offenders, "read YAML with acl_compose.yamlpos (read + load):\n" + "\n".join(
        offenders
    )


# --- the same refusals through the real CLI, for every YAML input -----------------------------

HOSTILE = {
    "alias-bomb": (bomb(9), "5:12", "aliases expand the document to more than"),
    "deep-10000": ("x: " + "[" * 10_000 + "]" * 10_000 + "\n", "1:68", "document nested deeper"),
    "scalar-100MB": (None, f"1:{yamlpos.MAX_BYTES + 1}", "document larger than"),
}


@pytest.fixture(scope="module")
def scalar_100mb(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.yaml"
    with open(path, "wb") as f:
        f.write(b"x: ")
        chunk = b"a" * (1 << 20)
        for _ in range(100):
            f.write(chunk)
        f.write(b"\n")
    return path


def _place(doc: str | None, big, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    if doc is None:
        os.link(big, dest)  # the same 100 MB file, written once
    else:
        dest.write_text(doc)
    return dest


INPUTS = {
    "ignition-render": ("cfg.yaml", lambda p, t: ("ignition", "render", p)),
    "ignition-validate": ("cfg.yaml", lambda p, t: ("ignition", "validate", p)),
    "manifest": ("manifest.yaml", lambda p, t: ("compose", p, "-o", t / "out")),
    "sysext.yaml": ("b/sysext.yaml", lambda p, t: ("sysext", "build", p.parent, "-o", t / "out")),
}  # fmt: skip


@pytest.mark.parametrize("doc", sorted(HOSTILE))
@pytest.mark.parametrize("kind", sorted(INPUTS))
def test_hostile_yaml_ends_fast_with_a_located_error(cli, tmp_path, scalar_100mb, kind, doc):
    text, where, problem = HOSTILE[doc]
    name, argv = INPUTS[kind]
    work = tmp_path.resolve()
    path = _place(text, scalar_100mb, work / name)
    start = time.monotonic()
    proc = cli(*argv(path, work), check=False, timeout=60)
    elapsed = time.monotonic() - start
    assert proc.returncode == 1, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "hint:"))]
    assert len(errors) == 2, proc.stderr  # one located error, one hint, nothing else
    assert errors[0].startswith(f"error: {path}:{where}: {problem}"), proc.stderr
    assert errors[1].startswith("hint: YAML inputs are limited to"), proc.stderr
    assert "Traceback" not in proc.stderr and not (work / "out").exists()
    print(f"{kind} {doc}: {elapsed:.2f}s")  # process start included; see bench_yamlpos.py


@pytest.mark.parametrize(
    "text,problem",
    [
        ("x: 2001-13-45\n", "cannot read '2001-13-45' as timestamp: month must be in 1..12"),
        ("x: " + "1" * 5000 + "\n", "as int: Exceeds the limit (4300 digits)"),
        ("x: !!int zz\n", "cannot read 'zz' as int: invalid literal"),
        ("x: !!bool maybe\n", "cannot read 'maybe' as bool"),
        (":: !!timestamp\n", "cannot read '' as timestamp"),  # found by the property tests
        ("x: !!seq 1\n", "expected a sequence node, but found scalar"),
        ("x: !!map [1]\n", "expected a mapping node, but found sequence"),
        ("? !!float nan?\n: 1\n", "cannot read 'nan?' as float"),
    ],
)
def test_bad_scalars_and_mistagged_nodes_are_located_yaml_errors(text, problem):
    # SafeConstructor lets ValueError, KeyError, AttributeError ... out for these.
    with pytest.raises(yaml.constructor.ConstructorError) as exc:
        yamlpos.load(text)
    assert problem in exc.value.problem
    assert exc.value.problem_mark is not None


# ---------------------------------------------------------------- one meaning for scalars


@pytest.mark.parametrize(
    "doc,mode,warning",
    [
        ("mode: 0644", 0o644, None),
        ("mode: 0o644", 0o644, None),
        ("mode: 04755", 0o4755, None),
        ("mode: 420", 420, None),  # Ignition JSON's decimal spelling of 0644: meant as written
        ("mode: 0", 0, None),
        ("mode: 493", 493, None),
        ("mode: 644", 644, "mode 644 is decimal (octal 01204); write 0644 for octal permissions"),
        ("mode: 755", 755, "mode 755 is decimal (octal 01363); write 0755 for octal permissions"),
    ],
)
def test_file_mode_is_butanes_rule(doc, mode, warning):
    loc = yamlpos.load(doc)
    assert yamlpos.file_mode(loc.data["mode"], loc.raw(("mode",))) == (mode, warning)


@pytest.mark.parametrize(
    "doc,problem",
    [
        ("mode: '0644'", "'0644' is quoted: write the number without quotes"),
        ('mode: "420"', "'420' is quoted"),
        ("mode: 0999", "0999 is not an octal number (digits 0-7 after the 0)"),
        ("mode: 0o999", "0o999 is not an octal number"),
        ("mode: rw-r--r--", "rw-r--r-- is not a number"),
        ("mode: 99999", "99999 is out of range (0 to 07777 octal, 4095)"),
        (
            "mode: 4755",
            "4755 is out of range (0 to 07777 octal, 4095); for octal permissions write 04755",
        ),  # fmt: skip
        ("mode: 010000", "010000 is out of range"),
        ("mode: true", "true is not an integer like 0644"),
        ("mode: 6.44", "6.44 is not an integer"),
    ],
)
def test_file_mode_refusals_say_what_to_write(doc, problem):
    loc = yamlpos.load(doc)
    with pytest.raises(yamlpos.ScalarError) as e:
        yamlpos.file_mode(loc.data["mode"], loc.raw(("mode",)))
    assert str(e.value).startswith(problem), str(e.value)


@pytest.mark.parametrize(
    "doc,message",
    [
        ("version: 0.10",
         'version 0.10 is a number (0.1) in YAML, not text: quote it, version: "0.10"'),
        ("version: 1.0", 'version 1.0 is a number in YAML, not text: quote it, version: "1.0"'),
        ("version: 3", 'version 3 is a number in YAML, not text: quote it, version: "3"'),
        ("name: yes", 'name yes is true/false in YAML, not text: quote it, name: "yes"'),
        ("name:", "name has no value"),
    ],
)  # fmt: skip
def test_versions_and_names_must_be_text(doc, message):
    loc = yamlpos.load(doc)
    key = doc.split(":")[0]
    assert yamlpos.text("1.10", "1.10", key) == "1.10"
    with pytest.raises(yamlpos.ScalarError) as e:
        yamlpos.text(loc.data[key], loc.raw((key,)), key)
    assert f"{key} {e.value}".startswith(message)
