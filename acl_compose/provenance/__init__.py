"""provenance: composed releases -> what they are made of and what changed between two.

Takes release directories (release.json, its SBOM, the images) or bare disk images; gives
`diff` (base, packages, sysexts and their files, Ignition structure, outputs, signer) and
`check_reproducible` (compose twice with separate caches, compare byte for byte).
`snapshot` reads either kind of input into one model.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "changes": ["diff", "format_text"],
        "snapshot": ["snapshot"],
        "reproducible": ["check_reproducible", "first_difference"],
    },
)
