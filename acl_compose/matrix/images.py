"""On the worker: an image reference -> a verified local disk image (cached by content).

A reference is what MATRIX.yaml said, never the bytes: a shared `path` (checked against its
sha256 when given), a `url` plus sha256 (downloaded once into the worker's cache by fetch's
pinned download), or a compose `release` directory or URL (its release.json names the image
and its sha256; with a certificate the whole release goes through compose's `verify`).
Verdicts are remembered per file identity (device, inode, size, mtime) so a worker hashes a
multi-gigabyte image once, not once per cell.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from acl_compose.errors import AclComposeError, FetchError, InputError, VerificationError
from acl_compose.run import set_pdeathsig
from acl_compose.util import atomic_write


@dataclass
class LocalImage:
    path: Path
    release_json: Path | None
    sha256: str | None
    verified: str  # what was checked, for the cell's record


def _stamp_key(path: Path, what: str) -> str:
    st = path.stat()
    ident = f"{path.resolve()}|{st.st_dev}|{st.st_ino}|{st.st_size}|{st.st_mtime_ns}|{what}"
    return hashlib.sha256(ident.encode()).hexdigest()


def _checked(cache: Path, path: Path, what: str, check: Any) -> None:
    """Run `check()` unless this exact file already passed `what` on this worker."""
    from acl_compose.fetch import Cache

    stamp = cache / "matrix" / "verified" / f"{_stamp_key(path, what)}.json"
    if stamp.is_file():
        return
    with Cache(cache).lock(f"matrix-verify:{stamp.name}"):
        if stamp.is_file():
            return
        check()
        atomic_write(stamp, json.dumps({"path": str(path), "check": what}).encode())


def _sha256_check(path: Path, expected: str) -> None:
    from acl_compose.image import sparse

    actual = sparse.hash_sparse(path)
    if actual != expected:
        raise VerificationError(
            f"{path}: sha256 {actual} does not match the expected {expected}",
            hint="the image changed or is corrupt; fix the matrix's sha256 or the image",
        )


def _pick_output(release: dict[str, Any], want: str | None, where: str) -> dict[str, Any]:
    """The output a QEMU cell boots: `want`'s format (else raw, then qcow2), preferring the
    qemu platform's image when a release has one per platform."""
    formats = [want] if want else ["raw", "qcow2"]
    usable = [
        o for o in release.get("outputs") or []
        if o.get("format") in formats and o.get("file") and o.get("sha256")
    ]  # fmt: skip
    usable.sort(key=lambda o: (formats.index(o["format"]), o.get("platform", "qemu") != "qemu"))
    if not usable:
        raise InputError(
            f"{where}: release.json lists no {want or 'raw or qcow2'} output",
            hint="compose with outputs: [raw] (or set output: in the matrix)",
        )
    o = usable[0]
    if Path(o["file"]).name != o["file"]:
        raise VerificationError(f"{where}: output file name {o['file']!r} has a path")
    return o


def _verify_release(out_dir: Path, cert: Path, used: set[str]) -> None:
    """compose's `verify`, ignoring outputs this worker did not download (`used` only)."""
    from acl_compose.compose import verify_release

    report = verify_release(out_dir, cert)
    bad = [
        f
        for f in report.failures
        if not (
            f["check"].startswith("output ")
            and f["check"][7:] not in used
            and f["detail"].endswith(": missing")
        )
    ]
    if bad:
        names = "; ".join(f["detail"] or f["check"] for f in bad)
        raise VerificationError(
            f"release {out_dir} does not verify: {names}",
            hint="do not test this release; rebuild or re-fetch it",
        )


def resolve(ref: dict[str, Any], cache: Path) -> LocalImage:
    """The verified local image for `ref` (see the module docstring)."""
    kind, loc, sha = ref["kind"], ref["location"], ref.get("sha256")
    if kind == "path":
        path = Path(loc)
        if not path.is_file():
            raise InputError(
                f"{path}: image not found on this worker",
                hint="a path image must exist at the same path on every worker "
                "(shared storage), or give url: + sha256:",
            )
        if sha:
            _checked(cache, path, f"sha256:{sha}", lambda: _sha256_check(path, sha))
        return LocalImage(path, None, sha, f"sha256 {sha}" if sha else "unchecked path")
    if kind == "url":
        from acl_compose.fetch import download

        path = download(loc, sha256=sha, cache_dir=cache)
        return LocalImage(path, None, sha, f"sha256 {sha} (downloaded)")
    if loc.startswith(("http://", "https://")):
        out_dir = _fetch_release(loc, ref.get("output"), cache, bool(ref.get("cert_pem")))
    else:
        out_dir = Path(loc)
    rj = out_dir / "release.json"
    if not rj.is_file():
        raise InputError(
            f"{rj}: not found on this worker",
            hint="a release directory must be on shared storage, or give its URL",
        )
    release = json.loads(rj.read_bytes())
    out = _pick_output(release, ref.get("output"), str(rj))
    image = out_dir / out["file"]
    if not image.is_file():
        raise InputError(f"{image}: release output not found", hint="recompose the release")
    if ref.get("cert_pem"):
        cert = (
            cache
            / "matrix"
            / "certs"
            / (hashlib.sha256(ref["cert_pem"].encode()).hexdigest() + ".crt")
        )
        if not cert.is_file():
            atomic_write(cert, ref["cert_pem"].encode())
        rj_sha = hashlib.sha256(rj.read_bytes()).hexdigest()
        _checked(
            cache,
            image.resolve(),
            f"release:{rj_sha}:{cert.name}",
            lambda: _verify_release(out_dir, cert, {out["file"]}),
        )
        how = f"release verified with {Path(ref.get('cert') or 'cert').name}"
    else:
        _checked(
            cache,
            image.resolve(),
            f"sha256:{out['sha256']}",
            lambda: _sha256_check(image, out["sha256"]),
        )
        how = "sha256 from release.json (no certificate: release.json itself unchecked)"
    return LocalImage(image, rj, out["sha256"], how)


def _fetch_release(url: str, want: str | None, cache: Path, signed: bool) -> Path:
    """release.json (+ .p7s) and the one output a cell boots, laid out as a release dir."""
    from acl_compose.fetch import download
    from acl_compose.fetch.transport import Transport

    t = Transport()
    try:
        rj = t.get_bytes(url + "release.json")
        p7s = t.get_bytes(url + "release.json.p7s") if signed else None
    finally:
        t.close()
    d = cache / "matrix" / "releases" / hashlib.sha256(rj).hexdigest()
    release = json.loads(rj)
    out = _pick_output(release, want, url + "release.json")
    blob = download(url + out["file"], sha256=out["sha256"], cache_dir=cache)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write(d / "release.json", rj)
    if p7s is not None:
        atomic_write(d / "release.json.p7s", p7s)
    link = d / out["file"]
    if not link.exists():
        tmp = d / f".{out['file']}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(blob, tmp)
            os.replace(tmp, link)
        finally:
            tmp.unlink(missing_ok=True)
    return d


def resolve_in_child(ref: dict[str, Any], cache: Path) -> LocalImage:
    """`resolve` in a process of its own: Dask workers are daemonic processes, which may not
    start the multiprocessing pool that compose's verify hashes /usr with."""
    proc = subprocess.run(
        [sys.executable, "-m", __name__, str(cache)],
        input=json.dumps(ref).encode(),
        capture_output=True,
        preexec_fn=set_pdeathsig,
        check=False,
    )
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        raise AclComposeError(
            f"image check exited {proc.returncode}: {err[-1] if err else 'no output'}"
        ) from None
    if "error" in out:
        kind = {"fetch": FetchError, "verification": VerificationError}.get(out["error"])
        raise (kind or InputError)(out["message"], hint=out["hint"])
    return LocalImage(
        Path(out["path"]),
        Path(out["release_json"]) if out["release_json"] else None,
        out["sha256"],
        out["verified"],
    )


def _main() -> int:
    ref = json.loads(sys.stdin.read())
    try:
        img = resolve(ref, Path(sys.argv[1]))
    except AclComposeError as e:
        kind = (
            "fetch"
            if isinstance(e, FetchError)
            else ("verification" if isinstance(e, VerificationError) else "input")
        )
        print(json.dumps({"error": kind, "message": e.message, "hint": e.hint}))
        return 0
    data = asdict(img)
    data.update(
        path=str(img.path), release_json=str(img.release_json) if img.release_json else None
    )
    print(json.dumps(data))
    return 0


if __name__ == "__main__":
    sys.exit(_main())
