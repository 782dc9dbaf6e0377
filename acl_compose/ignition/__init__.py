"""ignition: Butane-style YAML or Ignition JSON -> validated, merged Ignition JSON.

`butane` translates YAML (with source positions), `validation` applies the schema and
Ignition's own rules, `merging` follows Ignition's merge semantics, `locate` maps every key
back to its file:line:col for error messages.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "butane": [
            "BUTANE_VERSIONS", "data_url", "dumps", "is_json", "load", "render", "render_text",
            "resource_bytes", "validate",
        ],
        "merging": ["canonical", "merge"],
        "locate": ["IgnitionError", "Locator"],
        "validation": ["SPECS", "run_ignition_validate"],
    },
)  # fmt: skip
