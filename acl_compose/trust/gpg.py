"""OpenPGP verification with `gpgv` against a keyring made for the purpose.

The user's own keyring is never read or written: a `Trust` builds a private GNUPGHOME in a
temp dir, imports the candidate key file there, refuses it unless its primary fingerprint
is the pinned one, and exports just that key (with its subkeys) as gpgv's keyring.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO

from acl_compose.errors import InputError, VerificationError
from acl_compose.run import require, run
from acl_compose.ui import opt
from acl_compose.util import scratch_dir, signals_held

FLATCAR_FINGERPRINT = "F88CFEDEFF29A5B4D9523864E25D9AED0593B34A"
FLATCAR_KEY_URL = "https://www.flatcar.org/security/image-signing-key/Flatcar_Image_Signing_Key.asc"

_FPR_RE = re.compile(r"^[0-9A-F]{40}$|^[0-9A-F]{64}$")


def normalize_fingerprint(fpr: str) -> str:
    """Uppercase, spaces and a 0x prefix removed; only full fingerprints are accepted."""
    norm = fpr.replace(" ", "").upper().removeprefix("0X")
    if not _FPR_RE.match(norm):
        raise InputError(
            f"trusted key {fpr!r} is not a full OpenPGP fingerprint",
            hint="give the 40-hex-digit primary key fingerprint "
            "(`gpg --show-keys --with-colons KEYFILE`, the first fpr line)",
        )
    return norm


@dataclass(frozen=True)
class Signature:
    """A verified signature: the signing (sub)key, its primary key and the signing time."""

    fingerprint: str
    primary_fingerprint: str
    created: str  # ISO 8601 UTC

    def to_json(self) -> dict[str, str]:
        return {
            "fingerprint": self.fingerprint,
            "primary_fingerprint": self.primary_fingerprint,
            "created": self.created,
        }


def _gnupg_env(home: Path) -> dict[str, str]:
    return {"GNUPGHOME": str(home), "LC_ALL": "C"}


def key_fingerprints(key_file: str | os.PathLike[str]) -> list[str]:
    """Primary fingerprints of the keys in an armored or binary key file (imports nothing)."""
    with scratch_dir(prefix="acl-gpg-") as home:
        os.chmod(home, 0o700)
        proc = run(
            [
                "gpg",
                "--batch",
                "--no-autostart",  # reading public keys needs no gpg-agent: none is left behind
                "--with-colons",
                "--import-options",
                "show-only",
                "--import",
                str(key_file),
            ],
            env=_gnupg_env(Path(home)),
            check=False,
        )
    return _primary_fprs(proc.stdout.decode(errors="replace"))


def _primary_fprs(colons: str) -> list[str]:
    fprs, after_pub = [], False
    for line in colons.splitlines():
        fields = line.split(":")
        if fields[0] == "pub":
            after_pub = True
        elif fields[0] == "sub":
            after_pub = False
        elif fields[0] == "fpr" and after_pub and len(fields) > 9:
            fprs.append(fields[9].upper())
            after_pub = False
    return fprs


class Trust:
    """A private gpgv keyring holding exactly one trusted primary key (and its subkeys).

    Use as a context manager; the temp dir is removed on exit.
    """

    def __init__(self, key_file: str | os.PathLike[str], fingerprint: str = FLATCAR_FINGERPRINT):
        self.fingerprint = normalize_fingerprint(fingerprint)
        self.key_file = Path(key_file)
        if not self.key_file.is_file():
            raise InputError(
                f"keyring {self.key_file} does not exist",
                hint=f"check {opt('--keyring', 'the keyring path')}",
            )
        found = key_fingerprints(self.key_file)
        if self.fingerprint not in found:
            shown = ", ".join(found) if found else "no OpenPGP key"
            raise VerificationError(
                f"key file {self.key_file} holds {shown}, not the trusted key {self.fingerprint}",
                hint="use the right key file, or pin its fingerprint with "
                f"{opt('--trusted-key', 'the trusted key setting')} if you trust it",
            )
        self._home: Path | None = None
        try:
            with signals_held():  # a Ctrl-C right after mkdtemp still finds the folder
                self._home = Path(tempfile.mkdtemp(prefix="acl-gpgv-"))
            os.chmod(self._home, 0o700)
            env = _gnupg_env(self._home)
            # --no-autostart: public keys need no gpg-agent, so none is spawned (and left
            # behind) for every Trust.
            quiet = ["gpg", "--batch", "--quiet", "--no-autostart"]
            run([*quiet, "--import", str(self.key_file)], env=env)
            exported = run([*quiet, "--export", self.fingerprint], env=env).stdout
            self.keyring = self._home / "trusted.gpg"
            self.keyring.write_bytes(exported)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)

    def __enter__(self) -> Trust:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _gpgv_argv(self, status_fd: int = 1) -> list[str]:
        return [require("gpgv"), "--status-fd", str(status_fd), "--keyring", str(self.keyring)]

    def verify_file(
        self, sig: str | os.PathLike[str], data: str | os.PathLike[str], what: str
    ) -> Signature:
        """Check a detached signature over a file; `what` names the artifact (URL) in errors."""
        proc = run(
            [*self._gpgv_argv(), str(sig), str(data)], env=_gnupg_env(self._home), check=False
        )
        return self._result(proc.returncode, proc.stdout, proc.stderr, what)

    def verify_clearsigned(self, signed: bytes, what: str) -> tuple[bytes, Signature]:
        """Check a clearsigned (armored) message; return the signed text and signature."""
        with scratch_dir(prefix="acl-gpgv-") as tmp:
            src, out = Path(tmp) / "msg.asc", Path(tmp) / "msg"
            src.write_bytes(signed)
            proc = run(
                [*self._gpgv_argv(), "--output", str(out), str(src)],
                env=_gnupg_env(self._home),
                check=False,
            )
            sig = self._result(proc.returncode, proc.stdout, proc.stderr, what)
            return out.read_bytes(), sig

    def stream(self, sig: str | os.PathLike[str], what: str) -> StreamVerifier:
        """A verifier fed the signed data chunk by chunk (gpgv reads it from a pipe)."""
        return StreamVerifier(self, Path(sig), what)

    def _result(self, code: int, status: bytes, stderr: bytes, what: str) -> Signature:
        return parse_status(
            status.decode(errors="replace"),
            code,
            self.fingerprint,
            what,
            stderr.decode(errors="replace"),
        )


class StreamVerifier:
    """Runs `gpgv SIG -` and pipes the data in, so verification needs no second read."""

    def __init__(self, trust: Trust, sig: Path, what: str) -> None:
        self._trust, self._what = trust, what
        self._status: IO[bytes] = tempfile.TemporaryFile()
        self._stderr: IO[bytes] = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [*trust._gpgv_argv(), str(sig), "-"],
            stdin=subprocess.PIPE,
            stdout=self._status,
            stderr=self._stderr,
            env={**os.environ, **_gnupg_env(trust._home)},
        )
        self._broken = False

    def update(self, chunk: bytes | memoryview) -> None:
        if self._broken:
            return
        try:
            self._proc.stdin.write(chunk)  # type: ignore[union-attr]
        except BrokenPipeError:
            self._broken = True  # gpgv gave up early (e.g. unknown key): finish() reports it

    def finish(self) -> Signature:
        with contextlib.suppress(BrokenPipeError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        code = self._proc.wait()
        self._status.seek(0)
        self._stderr.seek(0)
        try:
            return self._trust._result(code, self._status.read(), self._stderr.read(), self._what)
        finally:
            self._status.close()
            self._stderr.close()

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        with contextlib.suppress(OSError):
            self._proc.stdin.close()  # type: ignore[union-attr]
        self._proc.wait()
        self._status.close()
        self._stderr.close()


def parse_status(status: str, code: int, trusted: str, what: str, stderr: str = "") -> Signature:
    """Turn gpgv's --status-fd output into a Signature, or raise VerificationError.

    VALIDSIG fields: fpr, date, timestamp, expire, version, reserved, pubkey algo, hash algo,
    class, primary fpr. An expired signing subkey is fine (Flatcar rotates them yearly and old
    releases stay valid); a revoked key or a bad signature is not.
    """
    lines = [ln.split() for ln in status.splitlines() if ln.startswith("[GNUPG:] ")]
    lines = [ln for ln in lines if len(ln) > 1]
    kinds = {ln[1] for ln in lines}
    if "BADSIG" in kinds:
        raise VerificationError(f"{what}: BAD signature (the file was altered or corrupted)")
    if "REVKEYSIG" in kinds:
        raise VerificationError(f"{what}: signed by a revoked key")
    if "ERRSIG" in kinds or "NO_PUBKEY" in kinds:
        keyid = next((ln[2] for ln in lines if ln[1] in ("ERRSIG", "NO_PUBKEY") and ln[2:]), "?")
        raise VerificationError(
            f"{what}: signed by key {keyid}, which is not the trusted key {trusted}",
            hint="the signer is not trusted; give the right "
            f"{opt('--keyring', 'keyring')} and {opt('--trusted-key', 'trusted key')}",
        )
    valid = next((ln for ln in lines if ln[1] == "VALIDSIG"), None)
    if code != 0 or valid is None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit status {code}"
        raise VerificationError(f"{what}: signature not verified ({detail})")
    # gpgv wrote it, but it is parsed like any input: a short or odd line is refused, not a crash.
    if len(valid) < 5 or not _FPR_RE.match(valid[2].upper()):
        raise VerificationError(f"{what}: malformed VALIDSIG status from gpgv: {' '.join(valid)}")
    fpr = valid[2].upper()
    primary = valid[11].upper() if len(valid) > 11 else fpr
    if primary != trusted:
        raise VerificationError(f"{what}: signed by {primary}, not the trusted key {trusted}")
    created = _timestamp(valid[4], what)
    return Signature(fingerprint=fpr, primary_fingerprint=primary, created=created)


def _timestamp(value: str, what: str = "signature") -> str:
    """VALIDSIG's timestamp is seconds since the epoch, or ISO 8601 (19700101T000000)."""
    try:
        if value.isascii() and value.isdigit():
            when = datetime.fromtimestamp(int(value), tz=UTC)
        else:
            when = datetime.strptime(value, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except (ValueError, OverflowError, OSError):
        raise VerificationError(f"{what}: malformed signature time {value!r} from gpgv") from None
    return when.isoformat().replace("+00:00", "Z")
