"""sysext: a bundle folder -> a signed systemd-sysext image; an image + base -> merge verdict.

`bundle` reads sysext.yaml, `assemble` builds the tree, `policy` refuses what an immutable
host must not carry, `ddi` lays out the GPT disk image, `builder` makes the filesystem, verity
tree and signature, `checker` applies systemd-sysext's match rules offline, `contents` lists an
image's files and their origins (for SBOMs and diffs), `sources` fetches and unpacks url/deb
entries, `oci` packs preloaded container images.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "builder": ["build"],
        "contents": ["image_contents", "overlap_warnings", "record_tree", "shared_paths"],
        "sources": ["SourceOptions", "downloads", "pool_path"],
        "checker": ["CheckResult", "check", "read_extension_releases"],
        "bundle": ["Bundle", "input_digest", "load_bundle"],
    },
)
