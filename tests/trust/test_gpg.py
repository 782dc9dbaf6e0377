"""trust.gpg: pinned trust, gpgv verification, status parsing; Flatcar's real key as default."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from acl_compose.errors import InputError, VerificationError
from acl_compose.fetch.cache import Cache
from acl_compose.fetch.fetcher import load_trust
from acl_compose.fetch.transport import Transport
from acl_compose.trust import gpg
from tests.conftest import run_cli
from tests.flatcar_tree import IMAGE, VERSION, Key, key_fixture, make_tree


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    yield from key_fixture(tmp_path_factory.mktemp("gnupg-gpgtest"), "Gpg Test <g@example.org>")


@pytest.fixture(scope="module")
def mallory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Key]:
    yield from key_fixture(tmp_path_factory.mktemp("gnupg-mallory"), "Mallory <m@example.org>")


def _v4_fingerprint(armored: str) -> str:
    """Independent of GnuPG: SHA-1 over 0x99, length, and the first public-key packet body."""
    body = "".join(
        ln
        for ln in armored.split("\n\n", 1)[1].splitlines()
        if ln and not ln.startswith(("=", "-----"))
    )
    data = base64.b64decode(body)
    tag = data[0]
    assert tag & 0x80, "not an OpenPGP packet"
    if tag & 0x40:  # new format
        first = data[1]
        if first < 192:
            length, off = first, 2
        elif first < 224:
            length, off = ((first - 192) << 8) + data[2] + 192, 3
        else:
            length, off = int.from_bytes(data[2:6], "big"), 6
        assert tag & 0x3F == 6
    else:  # old format
        ltype = tag & 3
        n = {0: 1, 1: 2, 2: 4}[ltype]
        length, off = int.from_bytes(data[1 : 1 + n], "big"), 1 + n
        assert (tag >> 2) & 0xF == 6
    packet = data[off : off + length]
    assert packet[0] == 4, "not a v4 key"
    return hashlib.sha1(b"\x99" + len(packet).to_bytes(2, "big") + packet).hexdigest().upper()


def test_reference_key_has_pinned_fingerprint(reference: Path) -> None:
    key_file = reference / "Flatcar_Image_Signing_Key.asc"
    assert _v4_fingerprint(key_file.read_text()) == gpg.FLATCAR_FINGERPRINT
    assert gpg.key_fingerprints(key_file) == [gpg.FLATCAR_FINGERPRINT]


def test_reference_key_is_accepted_as_default_trust(reference: Path, tmp_path: Path) -> None:
    key_file = reference / "Flatcar_Image_Signing_Key.asc"
    with load_trust(Cache(tmp_path), Transport(), keyring=key_file) as trust:
        assert trust.fingerprint == gpg.FLATCAR_FINGERPRINT
        listing = subprocess.run(
            ["gpg", "--batch", "--with-colons", "--show-keys", str(trust.keyring)],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "GNUPGHOME": str(tmp_path)},
        ).stdout
        pubs = [ln for ln in listing.splitlines() if ln.startswith("pub")]
        assert len(pubs) == 1 and "fpr" in listing and gpg.FLATCAR_FINGERPRINT in listing
        # Its signing subkeys came along (the data is signed by a subkey).
        subs = [ln.split(":") for ln in listing.splitlines() if ln.startswith("sub")]
        assert any("s" in fields[11] for fields in subs)


def test_key_with_other_fingerprint_refused(reference: Path, key: Key) -> None:
    with pytest.raises(VerificationError, match=str(key.public)) as info:
        gpg.Trust(key.public)  # default trust is Flatcar's key
    assert gpg.FLATCAR_FINGERPRINT in info.value.message
    with pytest.raises(VerificationError):
        gpg.Trust(reference / "Flatcar_Image_Signing_Key.asc", key.fingerprint)


def test_fingerprint_normalization() -> None:
    spaced = "F88C FEDE FF29 A5B4 D952  3864 E25D 9AED 0593 B34A"
    assert gpg.normalize_fingerprint(spaced.lower()) == gpg.FLATCAR_FINGERPRINT
    with pytest.raises(InputError, match="full OpenPGP fingerprint"):
        gpg.normalize_fingerprint("0593B34A")  # short key ids are spoofable


def test_detached_and_streamed_verification_agree(key: Key, tmp_path: Path) -> None:
    data = tmp_path / "f.bin"
    data.write_bytes(os.urandom(3 << 20))
    key.sign(data)
    with gpg.Trust(key.public, key.fingerprint) as trust:
        whole = trust.verify_file(f"{data}.sig", data, "f.bin")
        stream = trust.stream(Path(f"{data}.sig"), "f.bin")
        blob = data.read_bytes()
        for i in range(0, len(blob), 100_000):
            stream.update(blob[i : i + 100_000])
        assert stream.finish() == whole
        assert whole.fingerprint == key.signing_fingerprint
        assert whole.primary_fingerprint == key.fingerprint
        bad = trust.stream(Path(f"{data}.sig"), "f.bin")
        bad.update(blob[:-1] + bytes([blob[-1] ^ 1]))
        with pytest.raises(VerificationError, match="f.bin: BAD signature"):
            bad.finish()


def test_only_the_pinned_key_is_trusted(key: Key, mallory: Key, tmp_path: Path) -> None:
    """A key file holding two keys: the second one's signatures are still refused."""
    both = tmp_path / "both.asc"
    both.write_bytes(key.public.read_bytes() + mallory.public.read_bytes())
    data = tmp_path / "x"
    data.write_bytes(b"hello")
    mallory.sign(data)
    with (
        gpg.Trust(both, key.fingerprint) as trust,
        pytest.raises(VerificationError, match="not the trusted key"),
    ):
        trust.verify_file(f"{data}.sig", data, "x")


def test_clearsigned(key: Key, tmp_path: Path) -> None:
    msg = tmp_path / "DIGESTS"
    msg.write_text("# SHA512 HASH\n-- dash line\nabc  x\n")
    key.gpg("-u", key.fingerprint, "--clearsign", "-o", f"{msg}.asc", msg)
    with gpg.Trust(key.public, key.fingerprint) as trust:
        text, sig = trust.verify_clearsigned(Path(f"{msg}.asc").read_bytes(), "DIGESTS.asc")
        assert text.decode().replace("\r\n", "\n").rstrip("\n") == msg.read_text().rstrip("\n")
        assert sig.primary_fingerprint == key.fingerprint
        tampered = Path(f"{msg}.asc").read_bytes().replace(b"abc", b"abd")
        with pytest.raises(VerificationError, match="BAD"):
            trust.verify_clearsigned(tampered, "DIGESTS.asc")


def test_users_keyring_untouched(key: Key, tmp_path: Path, monkeypatch) -> None:
    home = tmp_path / "user-gnupg"
    home.mkdir(mode=0o700)
    monkeypatch.setenv("GNUPGHOME", str(home))
    data = tmp_path / "d"
    data.write_bytes(b"x")
    key.sign(data)
    with gpg.Trust(key.public, key.fingerprint) as trust:
        trust.verify_file(f"{data}.sig", data, "d")
        private_home = trust.keyring.parent
    assert list(home.iterdir()) == []
    assert not private_home.exists()


FPR_SUB = "A" * 40
FPR_PRI = "B" * 40
VALID = f"[GNUPG:] VALIDSIG {FPR_SUB} 2024-01-02 1704153600 0 4 0 22 10 00 {FPR_PRI}"
ERRSIG = "[GNUPG:] ERRSIG 0123456789ABCDEF 22 10 00 1704153600 9 -"


@pytest.mark.parametrize(
    ("status", "code", "error"),
    [
        (
            f"[GNUPG:] GOODSIG 1 x\n{VALID}",
            0,
            None,
        ),
        # An expired signing subkey: old releases stay verifiable.
        (
            f"[GNUPG:] EXPKEYSIG 1 x\n{VALID}",
            0,
            None,
        ),
        (
            f"[GNUPG:] REVKEYSIG 1 x\n{VALID}",
            0,
            "revoked",
        ),
        ("[GNUPG:] BADSIG 1 x", 1, "BAD signature"),
        (
            f"{ERRSIG}\n[GNUPG:] NO_PUBKEY 0123456789ABCDEF",
            2,
            "0123456789ABCDEF",
        ),
        (
            f"[GNUPG:] VALIDSIG {FPR_SUB} 2024-01-02 1704153600 0 4 0 22 10 00 {FPR_SUB}",
            0,
            "not the trusted key",
        ),
        ("", 2, "not verified"),
    ],
)
def test_parse_status(status: str, code: int, error: str | None) -> None:
    if error is None:
        sig = gpg.parse_status(status, code, FPR_PRI, "what")
        assert sig == gpg.Signature(FPR_SUB, FPR_PRI, "2024-01-02T00:00:00Z")
    else:
        with pytest.raises(VerificationError, match=error):
            gpg.parse_status(status, code, FPR_PRI, "what")


def test_cli_default_trust_refuses_other_signers(
    reference: Path, key: Key, tmp_path: Path, cache_dir: Path
) -> None:
    """--keyring with Flatcar's key (default pin) on a tree signed by another key: refused."""
    tree = make_tree(tmp_path / "amd64-usr", key, raw=b"tiny image" * 1000)
    proc = run_cli(
        "--cache-dir",
        cache_dir,
        "fetch",
        "--base-url",
        tree / VERSION,
        "--keyring",
        reference / "Flatcar_Image_Signing_Key.asc",
    )
    assert proc.returncode == 1
    assert "not the trusted key F88CFEDEFF29A5B4D9523864E25D9AED0593B34A" in proc.stderr
    assert not list(cache_dir.glob("blobs/sha512/*/*"))
    ok = run_cli(
        "--cache-dir",
        cache_dir,
        "fetch",
        "--base-url",
        tree / VERSION,
        "--keyring",
        key.public,
        "--trusted-key",
        key.fingerprint,
        "--artifact",
        IMAGE,
    )
    assert ok.returncode == 0, ok.stderr


def test_reading_keys_starts_no_gpg_agent(
    key: Key, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gpg starts a gpg-agent for a secret key even with --import-options show-only (an agent
    that lingers until it notices its home is gone). key_fingerprints and Trust pass
    --no-autostart: no agent at all. The private homes are kept here to look for one."""
    import shutil
    import tempfile

    from tests.conftest import processes_naming, stop_left_behind

    secret = tmp_path / "secret.asc"
    secret.write_bytes(key.gpg("--armor", "--export-secret-keys", key.fingerprint).stdout)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the private homes go here...
    monkeypatch.setattr(shutil, "rmtree", lambda *a, **k: None)  # ...and stay
    try:
        gpg.key_fingerprints(secret)  # a secret key given as the keyring (by mistake)
        assert gpg.key_fingerprints(key.public) == [key.fingerprint]
        with gpg.Trust(key.public, key.fingerprint):
            pass
        homes = [p.name for p in tmp_path.iterdir() if p.name.startswith("acl-gpg")]
        assert len(homes) == 4  # two above, and Trust: its key check and its keyring
        assert processes_naming(tmp_path) == {}
        assert not list(tmp_path.rglob("S.gpg-agent*"))
    finally:
        stop_left_behind(processes_naming(tmp_path))
