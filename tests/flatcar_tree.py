"""Test helpers: a throwaway OpenPGP key and a Flatcar-shaped, signed release tree.

Also a fault-injecting HTTP handler for acl_compose.httpserve (drop, stall, HTML, 5xx, slow).
Used by tests/fetch/conftest.py (the fetch tests' site), tests/trust/test_gpg.py and
tests/bench/bench_fetch.py.
"""

from __future__ import annotations

import bz2
import hashlib
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from acl_compose.fetch.httpserve import RangeRequestHandler

VERSION = "3510.2.8"
IMAGE = "flatcar_production_image.bin.bz2"
# As published for 3510.2.8 (FACTS.md section 1).
VERSION_TXT = """FLATCAR_BUILD=3510
FLATCAR_BRANCH=2
FLATCAR_PATCH=8
FLATCAR_VERSION=3510.2.8
FLATCAR_VERSION_ID=3510.2.8
FLATCAR_BUILD_ID="2023-09-19-1914"
FLATCAR_SDK_VERSION=3510.0.0
"""


@dataclass
class Key:
    home: Path
    fingerprint: str  # primary
    signing_fingerprint: str  # the signing subkey
    public: Path  # armored public key file

    def gpg(self, *args: str | os.PathLike[str]) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [
                "gpg",
                "--batch",
                "--yes",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
                *map(str, args),
            ],
            env={**os.environ, "GNUPGHOME": str(self.home)},
            check=True,
            capture_output=True,
        )

    def stop_agent(self) -> None:
        """Stop the gpg-agent that key generation and signing started for this home (gpg
        daemonizes it: it outlives the test session unless told to go)."""
        subprocess.run(["gpgconf", "--homedir", str(self.home), "--kill", "all"], check=True,
                       capture_output=True)  # fmt: skip

    def sign(self, path: Path) -> None:
        """F.sig (binary detached) as Flatcar publishes it."""
        self.gpg("-u", self.fingerprint, "--detach-sign", "-o", f"{path}.sig", path)

    def sign_digests(self, digests: Path) -> None:
        self.gpg("-u", self.fingerprint, "--detach-sign", "-o", f"{digests}.sig", digests)
        self.gpg("-u", self.fingerprint, "--clearsign", "-o", f"{digests}.asc", digests)


def make_key(home: Path, uid: str) -> Key:
    """An ed25519 certify-only primary key with a signing subkey (like Flatcar's layout).

    Its secret key lives in a gpg-agent started for `home`: call key.stop_agent() when done
    (fixtures: `yield from key_fixture(...)`)."""
    home.mkdir(parents=True, exist_ok=True)
    os.chmod(home, 0o700)
    key = Key(home, "", "", home / "public.asc")
    key.gpg("--quick-gen-key", uid, "ed25519", "cert", "never")
    colons = key.gpg("--with-colons", "--list-keys", uid).stdout.decode()
    key.fingerprint = next(ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr"))
    key.gpg("--quick-add-key", key.fingerprint, "ed25519", "sign", "never")
    colons = key.gpg("--with-colons", "--list-keys", uid).stdout.decode()
    fprs = [ln.split(":")[9] for ln in colons.splitlines() if ln.startswith("fpr")]
    key.signing_fingerprint = fprs[1]
    key.public.write_bytes(key.gpg("--armor", "--export", key.fingerprint).stdout)
    return key


def key_fixture(home: Path, uid: str) -> Iterator[Key]:
    """A key fixture's body (`yield from key_fixture(...)`): the key, then its agent stopped."""
    key = make_key(home, uid)
    yield key
    key.stop_agent()


def write_digests(path: Path) -> Path:
    data = path.read_bytes()
    lines = []
    for title, alg in (("MD5", "md5"), ("SHA1", "sha1"), ("SHA512", "sha512")):
        lines += [f"# {title} HASH", f"{hashlib.new(alg, data).hexdigest()}  {path.name}"]
    out = Path(f"{path}.DIGESTS")
    out.write_text("\n".join(lines) + "\n")
    return out


def publish(path: Path, key: Key) -> None:
    """Sign `path` and write its signed DIGESTS, like Flatcar's release upload."""
    key.sign(path)
    key.sign_digests(write_digests(path))


def image_bytes(mib: int = 6) -> bytes:
    """A few MiB disk-image-like payload: random data, zero runs (holes), text."""
    rnd = os.urandom(1 << 20)
    parts = [rnd, bytes(2 << 20), b"FLATCAR" * 1000, rnd[::-1], bytes(max(0, mib - 4) << 20)]
    return b"".join(parts)


def make_tree(root: Path, key: Key, version: str = VERSION, raw: bytes | None = None) -> Path:
    """root/VERSION/{version.txt,IMAGE,...} plus root/current -> VERSION."""
    vdir = root / version
    vdir.mkdir(parents=True)
    build, branch, patch = version.split(".")
    (vdir / "version.txt").write_text(
        f"FLATCAR_BUILD={build}\nFLATCAR_BRANCH={branch}\nFLATCAR_PATCH={patch}\n"
        f"FLATCAR_VERSION={version}\nFLATCAR_VERSION_ID={version}\n"
        f'FLATCAR_BUILD_ID="2023-09-19-1914"\nFLATCAR_SDK_VERSION={build}.0.0\n'
    )
    raw = image_bytes() if raw is None else raw
    (vdir / "raw.bin").write_bytes(raw)  # kept for comparisons, not part of a release
    (vdir / IMAGE).write_bytes(bz2.compress(raw, 1))
    (vdir / "flatcar_production_image_packages.txt").write_text("sys-apps/systemd-252\n")
    for name in ("version.txt", IMAGE, "flatcar_production_image_packages.txt"):
        publish(vdir / name, key)
    (root / "current").symlink_to(version)
    return root


def copy_tree(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


@dataclass
class Faults:
    """What the FaultHandler does, per request path suffix; and what it saw."""

    rules: dict[str, str] = field(default_factory=dict)  # suffix -> drop|stall|html|503x2|slow|404
    log: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range header)
    counts: dict[str, int] = field(default_factory=dict)
    agents: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def gets(self, suffix: str, ranged: bool | None = None) -> int:
        return sum(
            1
            for p, r in self.log
            if p.endswith(suffix) and (ranged is None or (r is not None) == ranged)
        )


def fault_handler(faults: Faults) -> type[RangeRequestHandler]:
    class FaultHandler(RangeRequestHandler):
        def do_GET(self) -> None:
            path, rng = self.path, self.headers.get("Range")
            rule = next((r for s, r in faults.rules.items() if path.endswith(s)), None)
            with faults.lock:
                faults.log.append((path, rng))
                faults.agents.add(self.headers.get("User-Agent", ""))
                n = faults.counts[path] = faults.counts.get(path, 0) + 1
            if rule == "html":
                return self._send(
                    200, b"<!DOCTYPE html><html><body>Oops, error</body></html>", "text/html"
                )
            if rule == "html-octet":  # an error page mislabelled as binary
                return self._send(
                    200, b"<html><body>Not here</body></html>", "application/octet-stream"
                )
            if rule == "404":
                return self.send_error(404)
            if rule and rule.startswith("503x") and n <= int(rule[4:]):
                return self.send_error(503)
            if rule in ("drop", "stall", "slow") and rng is None:
                return self._partial(rule)
            return super().do_GET()

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _partial(self, rule: str) -> None:
            data = Path(self.translate_path(self.path)).read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if rule == "slow":  # the whole file, in ~1.5 s: long enough for a racing client
                step = max(1, len(data) // 15)
                for i in range(0, len(data), step):
                    self.wfile.write(data[i : i + step])
                    time.sleep(0.1)
                return
            self.wfile.write(data[: len(data) // 2])
            if rule == "stall":
                time.sleep(8)
            self.close_connection = True

    return FaultHandler
