"""Fetch a Flatcar release and verify it before anything can use it.

Per artifact F, as apt does with a signed Release file: `F.DIGESTS` first, its signature
checked by gpgv (`F.DIGESTS.sig`, or the clearsigned `F.DIGESTS.asc`), then F streamed once
into a temp file while a thread beside the socket reads hashes it with SHA512; F is accepted
only if that SHA512 is the one the signed DIGESTS lists. With `check_file_signatures` (the
CLI's --check-file-signatures / --strict) F's own detached `F.sig` is also checked, by gpgv
reading the same stream from a pipe. Only then does the file enter the content-addressed
cache and the index (see cache.py); every artifact records which checks ran.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlparse

from acl_compose import ui
from acl_compose.errors import FetchError, InputError, VerificationError
from acl_compose.fetch.cache import Cache
from acl_compose.fetch.release import (
    CURRENT,
    DEFAULT_ARTIFACTS,
    Location,
    Release,
    check_artifact_name,
    default_base_url,
    locate,
    parse_version_txt,
)
from acl_compose.fetch.transport import NotFound, Settings, Threaded, Transport
from acl_compose.trust import gpg
from acl_compose.ui import opt
from acl_compose.util import OutputDir, scratch_dir

_HEX_LEN = {"MD5": 32, "SHA1": 40, "SHA256": 64, "SHA512": 128}
# Writes of 64 KiB: ext4 sizes page-cache folios by the write, and 1 MiB ones come from free
# blocks a VM's free page reporting gave back to the host (a host fault per page: up to 1 s).
WRITE = 64 << 10


# -- DIGESTS --------------------------------------------------------------------------------
def parse_digests(text: str, source: str = "DIGESTS") -> dict[str, dict[str, str]]:
    """`# MD5 HASH` / `# SHA1 HASH` / `# SHA512 HASH` sections of `<hex>  <name>` lines.

    Returns {algorithm: {file name: lowercase hex}}.
    """
    result: dict[str, dict[str, str]] = {}
    section: str | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        header = re.match(r"^#\s*([A-Za-z0-9-]+)\s+HASH\s*$", line)
        if header:
            section = header.group(1).upper().replace("-", "")
            result.setdefault(section, {})
            continue
        parts = line.split(None, 1)
        if section is None or len(parts) != 2 or not re.fullmatch(r"[0-9a-fA-F]+", parts[0]):
            raise VerificationError(f"{source}: line {lineno} is not `<hex>  <name>` in a section")
        want = _HEX_LEN.get(section)
        if want and len(parts[0]) != want:
            raise VerificationError(f"{source}: line {lineno}: {section} digest has wrong length")
        result[section][parts[1].lstrip("*")] = parts[0].lower()
    return result


def _check_where() -> str:
    """Where a missing release file is usually wrong, in the running command's words."""
    return (
        f"check {opt('--release', 'the release')}, {opt('--board', 'the board')}, "
        f"{opt('--base-url', 'the base URL')} and the artifact name"
    )


# -- results --------------------------------------------------------------------------------
# What was checked before an artifact was accepted (recorded in --json and release.json).
CHECK_DIGESTS_SIGNATURE = "digests-signature"  # F.DIGESTS signed by the pinned key (gpgv)
CHECK_SHA512 = "sha512"  # F's SHA512 is the one the signed DIGESTS lists
CHECK_FILE_SIGNATURE = "file-signature"  # F.sig, F's own detached signature (gpgv)
DEFAULT_CHECKS = (CHECK_DIGESTS_SIGNATURE, CHECK_SHA512)
STRICT_CHECKS = (*DEFAULT_CHECKS, CHECK_FILE_SIGNATURE)


@dataclass
class Artifact:
    name: str
    path: Path
    size: int
    sha512: str
    url: str
    signature: gpg.Signature  # the signature over F.DIGESTS, which vouches for the SHA512
    cached: bool = False
    checks: tuple[str, ...] = DEFAULT_CHECKS
    file_signature: gpg.Signature | None = None  # F.sig, when CHECK_FILE_SIGNATURE ran

    def to_json(self) -> dict[str, Any]:
        data = {
            "name": self.name,
            "path": str(self.path),
            "size": self.size,
            "sha512": self.sha512,
            "url": self.url,
            "cached": self.cached,
            "signature": self.signature.to_json(),
            "checks": list(self.checks),
        }
        if self.file_signature is not None:
            data["file_signature"] = self.file_signature.to_json()
        return data


@dataclass
class FetchResult:
    release: Release
    board: str
    base_url: str
    url: str  # the release folder
    artifacts: list[Artifact] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.release.to_json(),
            "board": self.board,
            "base_url": self.base_url,
            "url": self.url,
            "artifacts": [a.to_json() for a in self.artifacts],
        }

    def artifact(self, name: str) -> Artifact:
        return next(a for a in self.artifacts if a.name == name)


# -- the fetcher ----------------------------------------------------------------------------
class _Pipeline:
    """The sinks one download feeds: the temp file here, SHA512 (and gpgv) in threads.

    hashlib and pipe writes release the GIL, so on two cores the hash overlaps the socket
    reads and disk writes instead of following them. Chunks are views of the transport's
    reusable buffers; `settle` lets it wait for the threads before refilling one.
    """

    def __init__(self, out: BinaryIO, trust: gpg.Trust, sig: Path | None, what: str) -> None:
        self.out, self.trust, self.sig, self.what = out, trust, sig, what
        self.verifier: gpg.StreamVerifier | None = None
        self._workers: list[Threaded] = []
        self.reset()

    def reset(self) -> None:
        self.close()
        if self.out.tell():  # a restart; never truncate the fresh file: on ext4 that makes
            self.out.seek(0)  # close() flush it all to disk (auto_da_alloc)
            self.out.truncate()
        self.sha512 = hashlib.sha512()
        self._workers = [Threaded(self.sha512.update)]
        if self.sig is not None:
            self.verifier = self.trust.stream(self.sig, self.what)
            self._workers.append(Threaded(self.verifier.update))

    def update(self, chunk: memoryview) -> None:
        for w in self._workers:
            w.update(chunk)
        for i in range(0, len(chunk), WRITE):
            self.out.write(chunk[i : i + WRITE])

    def settle(self, limit: int) -> None:
        for w in self._workers:
            w.settle(limit)

    def digest(self) -> str:
        for w in self._workers:
            w.close()
        self._workers = []
        return self.sha512.hexdigest()

    def signature(self) -> gpg.Signature | None:
        verifier, self.verifier = self.verifier, None
        assert not self._workers
        return verifier.finish() if verifier is not None else None

    def close(self) -> None:
        """Stop whatever is still running (after an error or before a restart)."""
        for w in self._workers:
            with contextlib.suppress(Exception):
                w.close()
        self._workers = []
        if self.verifier:
            self.verifier.abort()
            self.verifier = None


class Fetcher:
    def __init__(
        self,
        loc: Location,
        board: str,
        cache: Cache,
        trust: gpg.Trust,
        transport: Transport,
        offline: bool = False,
        channel: str = "stable",
        check_file_signatures: bool = False,
    ) -> None:
        self.loc, self.board, self.cache, self.trust = loc, board, cache, trust
        self.transport, self.offline, self.channel = transport, offline, channel
        # The index is keyed by the signer, not the URL: same signed release, same entry.
        self.signer = trust.fingerprint
        self.file_signatures = check_file_signatures
        self.checks = STRICT_CHECKS if check_file_signatures else DEFAULT_CHECKS

    def resolve(self, release: str) -> str:
        """`current` (or a flat local folder) -> the version its signed version.txt names."""
        if release != CURRENT and not self.loc.flat:
            return release
        if self.offline:
            version = self.cache.current(self.signer, self.board, self.channel)
            if not version:
                raise FetchError(
                    f"{self.loc.directory(CURRENT)}version.txt: not in the cache "
                    f"({opt('--offline', 'offline')})",
                    hint=f"name a cached release ({opt('--release VERSION', 'its version')}), "
                    "or fetch once online",
                )
            return version
        url = self.loc.directory(CURRENT) + "version.txt"
        data = self._get(url)
        self._verify_bytes(self._get(url + ".sig", signature_of=url), data, url)
        version = parse_version_txt(data.decode(errors="replace"), url).version
        if release != CURRENT and release != version:
            raise InputError(f"{url}: holds release {version}, not the requested {release}")
        self.cache.set_current(self.signer, self.board, self.channel, version)
        return version

    def _get(self, url: str, signature_of: str | None = None) -> bytes:
        try:
            return self.transport.get_bytes(url)
        except NotFound as e:
            if signature_of is None:
                raise
            raise VerificationError(
                f"{url}: signature missing, refusing the unsigned {signature_of}",
                hint="only signed releases are used; check the release server",
            ) from e

    def _verify_bytes(self, sig: bytes, data: bytes, what: str) -> gpg.Signature:
        with scratch_dir(prefix="acl-sig-") as tmp:
            (Path(tmp) / "sig").write_bytes(sig)
            (Path(tmp) / "data").write_bytes(data)
            return self.trust.verify_file(Path(tmp) / "sig", Path(tmp) / "data", what)

    def digests(self, url: str) -> tuple[dict[str, dict[str, str]], gpg.Signature]:
        """The verified DIGESTS of one artifact URL, and the signature that vouches for it."""
        durl = url + ".DIGESTS"
        try:
            text: bytes | None = self.transport.get_bytes(durl)
        except NotFound:
            text = None
        if text is not None:
            try:
                sig = self.transport.get_bytes(durl + ".sig")
            except NotFound:
                pass
            else:
                signature = self._verify_bytes(sig, text, durl)
                return parse_digests(text.decode(errors="replace"), durl), signature
        try:
            asc = self.transport.get_bytes(durl + ".asc")
        except NotFound as e:
            if text is None and not self.transport.exists(url):
                raise NotFound(
                    f"{url}: not found",
                    hint=_check_where(),
                ) from e
            missing = f"{durl}.sig and .asc" if text is not None else durl
            raise VerificationError(
                f"{missing}: missing, cannot check {url}",
                hint="only signed releases are used; check the release server",
            ) from e
        signed, signature = self.trust.verify_clearsigned(asc, durl + ".asc")
        return parse_digests(signed.decode(errors="replace"), durl + ".asc"), signature

    def fetch(self, version: str, name: str, progress: bool = False) -> Artifact:
        check_artifact_name(name)
        url = self.loc.url(version, name)
        signer, board, cache = self.signer, self.board, self.cache
        with cache.lock(f"{signer}|{board}|{version}|{name}"):
            hit = self._cached(url, version, name)
            if hit and self.offline:
                return self._as_requested(hit, version)
            if self.offline:
                raise FetchError(
                    f"{url}: not in the cache ({opt('--offline', 'offline')})",
                    hint="fetch it once online",
                )
            # The signed DIGESTS first (kilobytes): nothing big is downloaded for a bad one.
            digests, signature = self.digests(url)
            expected = digests.get("SHA512", {}).get(name)
            if not expected:
                raise VerificationError(f"{url}.DIGESTS: no SHA512 line for {name}")
            if hit and hit.sha512 == expected:  # what the server signs now: not stale
                return self._as_requested(hit, version)
            sig_bytes = self._get(url + ".sig", signature_of=url) if self.file_signatures else None
            with cache.temp_file(name) as (tmp, out), contextlib.ExitStack() as stack:
                sig = None
                if sig_bytes is not None:
                    sig, sf = stack.enter_context(cache.temp_file(name + ".sig"))
                    sf.write(sig_bytes)
                    sf.close()
                pipe = _Pipeline(out, self.trust, sig, url)
                try:
                    size = self.transport.stream(
                        url, [pipe], pipe.reset, progress_label=name if progress else None
                    )
                    out.flush()
                    if pipe.digest() != expected:
                        raise VerificationError(
                            f"{url}: SHA512 does not match {name}.DIGESTS (corrupted or tampered)"
                        )
                    file_signature = pipe.signature()
                finally:
                    pipe.close()
                out.close()
                blob = cache.store(tmp, expected)
            meta = {
                "url": url,
                "name": name,
                "size": size,
                "sha512": expected,
                "trusted": self.trust.fingerprint,
                "signature": signature.to_json(),
                "checks": list(self.checks),
                "file_signature": file_signature.to_json() if file_signature else None,
            }
            path = cache.record(signer, board, version, name, blob, meta)
            return Artifact(
                name, path, size, expected, url, signature, False, self.checks, file_signature
            )

    def _cached(self, url: str, version: str, name: str) -> Artifact | None:
        signer, board = self.signer, self.board
        meta = self.cache.entry(signer, board, version, name)
        if not meta:
            return None
        link = self.cache.link_path(signer, board, version, name)
        try:
            ok = (
                meta.get("trusted") == self.trust.fingerprint
                and link.resolve() == self.cache.blob_path(meta["sha512"]).resolve()
                and self.cache.blob_ok(link, int(meta["size"]), meta["sha512"])
            )
            signature = _signature(meta["signature"])
            checks = meta.get("checks")
            if checks is None:  # written before checks were recorded: F.sig was always checked
                checks, file_signature = list(STRICT_CHECKS), signature
            else:
                file_signature = (
                    _signature(meta["file_signature"]) if meta.get("file_signature") else None
                )
        except (KeyError, TypeError, ValueError, OSError):
            ok = False
        if not ok:
            self.cache.forget(signer, board, version, name)
            if self.offline:
                raise VerificationError(
                    f"{link}: cached copy failed its re-check (or was verified with another key)",
                    hint="fetch it again online",
                )
            return None
        return Artifact(
            name,
            link,
            int(meta["size"]),
            meta["sha512"],
            url,
            signature,
            True,
            tuple(checks),
            file_signature,
        )

    def _as_requested(self, hit: Artifact, version: str) -> Artifact:
        """A cache hit reported with this fetch's checks (so the output does not depend on
        how the cache was filled); F.sig is checked in place if it was not yet and is wanted."""
        file_signature = None
        if self.file_signatures:
            file_signature = hit.file_signature
            if CHECK_FILE_SIGNATURE not in hit.checks or file_signature is None:
                file_signature = self._check_cached_file_signature(hit, version)
        return dataclasses.replace(hit, checks=self.checks, file_signature=file_signature)

    def _check_cached_file_signature(self, hit: Artifact, version: str) -> gpg.Signature:
        """A file cached on DIGESTS alone, now wanted with F.sig checked: check it in place."""
        name, link = hit.name, hit.path
        if self.offline:
            raise VerificationError(
                f"{link}: cached without its file signature check; offline "
                f"({opt('--offline', 'the cache only')}), {name}.sig cannot be fetched",
                hint="run it once online with "
                + opt("--check-file-signatures", "the file signatures checked"),
            )
        sig_bytes = self._get(hit.url + ".sig", signature_of=hit.url)
        with self.cache.temp_file(name + ".sig") as (sig, sf):
            sf.write(sig_bytes)
            sf.close()
            try:
                file_signature = self.trust.verify_file(sig, link, hit.url)
            except VerificationError:  # a file its own signature disowns: keep none of it
                self.cache.forget(self.signer, self.board, version, name)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.cache.blob_path(hit.sha512))
                raise
        meta = self.cache.entry(self.signer, self.board, version, name) or {}
        meta.update(checks=list(STRICT_CHECKS), file_signature=file_signature.to_json())
        self.cache.record(self.signer, self.board, version, name, link.resolve(), meta)
        return file_signature


def _signature(data: dict[str, str]) -> gpg.Signature:
    return gpg.Signature(data["fingerprint"], data["primary_fingerprint"], data["created"])


def load_trust(
    cache: Cache,
    transport: Transport,
    keyring: str | os.PathLike[str] | None = None,
    trusted_key: str | None = None,
    offline: bool = False,
) -> gpg.Trust:
    """The trusted key: --keyring FILE, else Flatcar's key downloaded (cached for --offline)."""
    fpr = gpg.normalize_fingerprint(trusted_key or gpg.FLATCAR_FINGERPRINT)
    if keyring:
        return gpg.Trust(keyring, fpr)
    if fpr != gpg.FLATCAR_FINGERPRINT:
        raise InputError(
            f"trusted key {fpr} needs a key file holding it ({opt('--keyring FILE', 'a keyring')})",
            hint="only Flatcar's own key is downloaded automatically",
        )
    cached = cache.root / "keys" / f"{fpr}.asc"
    if offline:
        if not cached.is_file():
            raise FetchError(
                f"{gpg.FLATCAR_KEY_URL}: signing key not in the cache "
                f"({opt('--offline', 'offline')})",
                hint=f"give the key file ({opt('--keyring FILE', 'a keyring')}) or fetch once "
                "online",
            )
        return gpg.Trust(cached, fpr)
    # Always refreshed online: Flatcar adds a new signing subkey about once a year.
    data = transport.get_bytes(gpg.FLATCAR_KEY_URL)
    with cache.temp_file("flatcar-key.asc") as (tmp, f):
        f.write(data)
        f.close()
        trust = gpg.Trust(tmp, fpr)  # refuses a key with another fingerprint
        cached.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, cached)
    return trust


def fetch_release(
    *,
    cache_dir: str | os.PathLike[str],
    channel: str | None = "stable",
    release: str | None = CURRENT,
    board: str | None = "amd64-usr",
    base_url: str | None = None,
    artifacts: Sequence[str] | None = None,
    keyring: str | os.PathLike[str] | None = None,
    trusted_key: str | None = None,
    offline: bool = False,
    progress: bool = False,
    settings: Settings | None = None,
    check_file_signatures: bool = False,
) -> FetchResult:
    """Fetch and verify `version.txt` plus `artifacts` (default: the compose set).

    None for channel/release/board means the default (callers pass manifest fields as-is).
    Each file is checked against its signed DIGESTS; `check_file_signatures` also checks
    its detached F.sig (gpgv hashes the file again, in parallel: slower, same trust root).
    """
    channel, release, board = channel or "stable", release or CURRENT, board or "amd64-usr"
    names = ["version.txt"] + [n for n in (artifacts or DEFAULT_ARTIFACTS) if n != "version.txt"]
    for n in names:
        check_artifact_name(n)
    loc = locate(base_url or default_base_url(channel, board))
    cache = Cache(cache_dir)
    transport = Transport(settings, progress=progress)
    try:
        with load_trust(cache, transport, keyring, trusted_key, offline) as trust:
            fetcher = Fetcher(
                loc, board, cache, trust, transport, offline, channel, check_file_signatures
            )
            version = fetcher.resolve(release)
            got = [fetcher.fetch(version, n, progress) for n in names]
    finally:
        transport.close()
    vt = got[0]
    rel = parse_version_txt(vt.path.read_text(errors="replace"), vt.url)
    if rel.version != version:
        raise VerificationError(f"{vt.url}: says FLATCAR_VERSION={rel.version}, expected {version}")
    return FetchResult(rel, board, loc.base, loc.directory(version), got)


def export(
    artifacts: Sequence[Artifact], out_dir: str | os.PathLike[str], *, force: bool = False
) -> list[Path]:
    """Place verified artifacts in `out_dir` by name: hard link when possible, else copy.
    `out_dir` follows the output-folder rule (util.OutputDir): exports accumulate there."""
    output = OutputDir(out_dir, "fetch", force=force)
    output.check([a.name for a in artifacts])
    with output.staging() as stage:
        for a in artifacts:
            src = a.path.resolve()
            try:
                os.link(src, stage / a.name)
            except OSError:
                shutil.copyfile(src, stage / a.name)
    return [output.path / a.name for a in artifacts]


# -- pinned generic downloads ---------------------------------------------------------------
def download(
    url: str,
    *,
    sha256: str,
    cache_dir: str | os.PathLike[str],
    offline: bool = False,
    progress: bool = False,
) -> Path:
    """Download `url` (http(s)://, file:// or a local path) pinned by sha256; cached by digest.

    Returns `<cache>/blobs/sha256/ab/<sha256>/<file name>`; raises VerificationError (and keeps
    nothing) when the content does not match.
    """
    digest = sha256.lower().removeprefix("sha256:").removeprefix("sha256-")
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise InputError(f"sha256 {sha256!r} for {url} is not 64 hex digits")
    if "://" not in url:
        url = Path(url).expanduser().resolve().as_uri()
    name = unquote(urlparse(url).path).rstrip("/").rsplit("/", 1)[-1]
    name = re.sub(r"[^A-Za-z0-9._+~-]", "_", name).lstrip(".") or "download"
    cache = Cache(cache_dir)
    dest = cache.root / "blobs" / "sha256" / digest[:2] / digest / name
    with cache.lock(f"sha256:{digest}"):
        if dest.is_file():
            if cache.blob_ok(dest, dest.stat().st_size, digest, "sha256"):
                return dest
            # Never used: a changed cache file is removed, and fetched again only if allowed.
            os.unlink(dest)
            if offline:
                raise VerificationError(
                    f"{url}: the cached copy {dest} does not match its pinned sha256 {digest} "
                    "(corrupt or tampered with); it was removed",
                    hint=f"run again without {opt('--offline', 'offline mode')} to download it "
                    "anew",
                )
            ui.warn(f"{dest}: cached copy does not match sha256 {digest}; removed, downloading")
        if offline:
            raise FetchError(
                f"{url}: not in the cache ({opt('--offline', 'offline')})",
                hint="fetch it once online",
            )
        transport = Transport(progress=progress)
        try:
            with cache.temp_file(name) as (tmp, out):
                h = hashlib.sha256()

                class _Sink:
                    def update(self, chunk: bytes | memoryview) -> None:
                        out.write(chunk)
                        h.update(chunk)

                def restart() -> None:
                    nonlocal h
                    out.seek(0)
                    out.truncate()
                    h = hashlib.sha256()

                transport.stream(url, [_Sink()], restart, progress_label=name if progress else None)
                out.close()
                if h.hexdigest() != digest:
                    raise VerificationError(
                        f"{url}: sha256 {h.hexdigest()} does not match the pinned {digest}",
                        hint="the file changed upstream or was tampered with; re-check the pin",
                    )
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.chmod(tmp, 0o444)
                os.replace(tmp, dest)
        finally:
            transport.close()
    return dest
