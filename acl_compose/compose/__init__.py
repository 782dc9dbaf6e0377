"""compose: a manifest -> a signed release; a release or image -> a report.

`manifest` reads the YAML, `pipeline` runs the steps (fetch, verify /usr, build and place
sysexts, bake Ignition, write outputs, the SPDX SBOM (`sbom`) and the signed release.json),
`inspect` reports on an image, `verification` re-checks a composed release end to end.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "pipeline": ["ComposeError", "compose"],
        "release_dir": ["RELEASE_LAST", "release_output"],
        "manifest": ["Manifest", "load_manifest"],
        "inspect": ["format_text", "inspect_image"],
        "verification": ["raise_on_failure", "verify_release"],
        "sbom": ["read_release_sbom"],
    },
)
