"""The testbed's OpenPGP signing key and Flatcar-style signatures and DIGESTS files.

The key lives in a private GNUPGHOME under the testbed cache (never the user's keyring),
so its fingerprint stays the same across builds until the cache is wiped.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from acl_compose.run import run, which

UID = "acl-compose testbed signing key <testbed@acl-compose.invalid>"


def _gpg(home: Path, *args: str | os.PathLike[str], input: bytes | None = None) -> bytes:
    argv = ["gpg", "--homedir", home, "--batch", "--yes", "--no-tty", "--quiet", *args]
    return run(argv, input=input).stdout


@contextlib.contextmanager
def gnupg_home(home: Path) -> Iterator[Path]:
    """Yield the testbed GNUPGHOME; stop the gpg-agent we started on the way out."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    try:
        yield home
    finally:
        if which("gpgconf"):
            run(["gpgconf", "--homedir", home, "--kill", "all"], check=False)


def ensure_key(home: Path) -> str:
    """Fingerprint of the testbed key, generating an ed25519 signing key on first use."""
    fpr = fingerprint(home)
    if fpr:
        return fpr
    _gpg(
        home,
        "--passphrase",
        "",
        "--pinentry-mode",
        "loopback",
        "--quick-gen-key",
        UID,
        "ed25519",
        "sign",
        "never",
    )
    fpr = fingerprint(home)
    assert fpr, "gpg generated no key"
    return fpr


def fingerprint(home: Path) -> str | None:
    if not (home / "pubring.kbx").exists():
        return None
    out = _gpg(home, "--with-colons", "--list-secret-keys").decode()
    for line in out.splitlines():
        if line.startswith("fpr:"):
            return line.split(":")[9]
    return None


def export_public(home: Path, fpr: str) -> bytes:
    return _gpg(home, "--armor", "--export", fpr)


def digests(path: Path) -> str:
    """Flatcar's DIGESTS: MD5, SHA1 and SHA512 sections, `hex  basename` lines."""
    hashes = {alg: hashlib.new(alg) for alg in ("md5", "sha1", "sha512")}
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashes.values():
                h.update(chunk)
    out = []
    for alg in ("md5", "sha1", "sha512"):
        out.append(f"# {alg.upper()} HASH\n{hashes[alg].hexdigest()}  {path.name}\n")
    return "".join(out)


def sign_artifact(home: Path, fpr: str, path: Path) -> list[Path]:
    """Write F.sig, F.DIGESTS, F.DIGESTS.asc and F.DIGESTS.sig beside F."""
    key = ["--local-user", fpr, "--pinentry-mode", "loopback", "--passphrase", ""]
    sig = path.with_name(path.name + ".sig")
    dig = path.with_name(path.name + ".DIGESTS")
    _gpg(home, *key, "--detach-sign", "--output", sig, path)
    dig.write_text(digests(path))
    asc = dig.with_name(dig.name + ".asc")
    dsig = dig.with_name(dig.name + ".sig")
    _gpg(home, *key, "--clearsign", "--output", asc, dig)
    _gpg(home, *key, "--detach-sign", "--output", dsig, dig)
    return [sig, dig, asc, dsig]
