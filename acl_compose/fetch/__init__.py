"""fetch: channel/version/URL -> verified Flatcar release artifacts in the cache.

`release` names things (channels, boards, version.txt), `transport` moves bytes over HTTP or
from disk, `fetcher` checks each artifact against the signed DIGESTS and its OpenPGP signature
before it enters the content-addressed `cache`; `unpack` decompresses, `httpserve` serves a
release tree on loopback.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "fetcher": [
            "Artifact", "FetchResult", "Fetcher", "download", "export", "fetch_release",
            "load_trust", "parse_digests",
        ],
        "release": [
            "BOARDS", "CHANNELS", "CURRENT", "Release", "check_artifact_name", "check_version",
            "parse_version_txt",
        ],
        "cache": ["Cache"],
        "unpack": ["decompress"],
        "httpserve": ["serve"],
    },
)  # fmt: skip
