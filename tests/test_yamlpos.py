"""yamlpos: safe_load's data plus the position of every key and item, bad keys refused."""

import pytest
import yaml

from acl_compose import yamlpos

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
    assert loc.raw(("top", "flow", 1)) == "y"
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
