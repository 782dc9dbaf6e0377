"""Property tests of every YAML input: yamlpos itself raises only yaml.YAMLError, and each
reader on top of it (Ignition YAML and JSON, the compose manifest, sysext.yaml) raises only
the project's own InputError, on arbitrary text and on mutations of the product's own files."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from acl_compose import ignition, yamlpos
from acl_compose.compose.manifest import load_manifest
from acl_compose.errors import InputError
from acl_compose.ignition.locate import IgnitionError
from acl_compose.sysext.bundle import load_bundle
from tests.conftest import REPO
from tests.properties import mutated, outcome

pytestmark = pytest.mark.property
YAML_CHARS = "&*!|>-:?,[]{}#%@'\"\n \t<0123456789abcxyz~.=$\\"
IGNITION_YAML = (REPO / "ignition" / "aks-node.yaml").read_text()
MANIFEST = (REPO / "examples" / "manifest.yaml").read_text()
SYSEXT = (REPO / "sysext" / "azure-base" / "sysext.yaml").read_text()
TAGS = st.sampled_from(
    ["!!int", "!!float", "!!bool", "!!timestamp", "!!binary", "!!seq", "!!map", "!!set",
     "!!omap", "!!pairs", "!!str", "!!null", "!!python/object", "!foo"]
)  # fmt: skip
SCALARS = st.one_of(
    st.sampled_from(["2001-13-45", "0x_", "0b", "1_0", ".inf", "~", "<<", "0o17", "1" * 5000]),
    st.text(YAML_CHARS, max_size=12),
)


@st.composite
def tagged(draw: st.DrawFn) -> str:
    """Small documents of tagged and odd scalars, aliases and merges."""
    lines = []
    for i in range(draw(st.integers(1, 5))):
        tag = draw(st.one_of(st.just(""), TAGS))
        anchor = f"&a{i} " if draw(st.booleans()) else ""
        value = draw(st.one_of(SCALARS, st.just("[1, 2]"), st.just("{k: v}")))
        ref = draw(st.sampled_from(["", f"*a{max(i - 1, 0)}", f"{{<<: *a{max(i - 1, 0)}}}"]))
        lines.append(f"k{i}: {anchor}{tag} {ref or value}")
    return "\n".join(lines) + "\n"


DOCS = st.one_of(
    st.text(max_size=200),
    st.text(YAML_CHARS, max_size=200),
    tagged(),
    mutated(IGNITION_YAML, YAML_CHARS),
    mutated(MANIFEST, YAML_CHARS),
    mutated(SYSEXT, YAML_CHARS),
)


@given(DOCS)
def test_yamlpos_raises_only_yaml_errors_and_every_one_is_located(text):
    result = outcome(yamlpos.load, text, errors=yaml.YAMLError)
    if isinstance(result, yaml.YAMLError):
        message = yamlpos.describe(result, "f.yaml")
        assert re.match(r"f\.yaml:\d+:\d+: ", message), message  # always file:line:col


@given(DOCS)
def test_ignition_yaml_raises_only_ignition_errors(text):
    result = outcome(ignition.butane.render_text, text, "f.yaml", None, [], errors=IgnitionError)
    assert isinstance(result, dict | IgnitionError)


RENDERED = ignition.dumps(ignition.render(REPO / "ignition" / "aks-node.yaml", warnings=[]), True)


@given(st.one_of(st.text(max_size=200), mutated(RENDERED, '{}[]",:0123456789 \n\\/tfn')))
def test_ignition_json_raises_only_ignition_errors(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "cfg.ign")
        path.write_text(text)
        result = outcome(ignition.load, path, None, [], errors=InputError)
    assert isinstance(result, dict | InputError)


@given(DOCS)
def test_manifest_raises_only_input_errors(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp, "manifest.yaml")
        path.write_text(text)
        result = outcome(load_manifest, path, errors=InputError)
    assert not isinstance(result, BaseException) or isinstance(result, InputError)


@given(DOCS)
def test_sysext_yaml_raises_only_input_errors(text):
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "sysext.yaml").write_text(text)
        result = outcome(load_bundle, tmp, errors=InputError)
    assert not isinstance(result, BaseException) or isinstance(result, InputError)
