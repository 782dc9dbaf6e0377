"""trust: the floor every stage stands on for integrity.

Takes bytes and keys; gives dm-verity hash trees (`verity`), PKCS#7 root-hash signatures and
release keys (`signing`, with `pkcs7` reading the DER), and OpenPGP verdicts from gpgv (`gpg`).
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {"verity": ["verity"], "signing": ["signing"], "gpg": ["gpg"]},
)
