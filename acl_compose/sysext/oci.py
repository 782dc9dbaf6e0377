"""OCI image archives, written reproducibly, for bundles to preload into containerd.

A bundle's `images:` entry describes a one-layer image by the same `files:` entries as the
bundle itself (deb, url, from, inline, symlink). The build assembles that root filesystem,
writes it as an uncompressed layer, and packs an OCI image layout (oci-layout, index.json,
blobs/sha256/...) into one tar: what `ctr images import` and `skopeo copy oci-archive:` read.
Same inputs, same bytes: sorted entries, owner root, mtime 0, no creation date in the config.

The archive lands in the extension at `/usr/share/container-runtime/preload/<namespace>/
<name>.tar`, where the container-runtime extension's `containerd-preload-images.service`
imports every archive at boot (any other OCI or Docker archive placed there is imported too).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from acl_compose.errors import InputError

PRELOAD_DIR = "/usr/share/container-runtime/preload"
IMAGE_KEYS = {"name", "ref", "namespace", "entrypoint", "cmd", "env", "workdir", "path", "files"}
OCI_ARCH = {"x86-64": "amd64", "arm64": "arm64"}
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar"
DEFAULT_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
# registry/path:tag, lowercase path (docker reference grammar, simplified).
_REF = re.compile(r"^[a-z0-9.-]+(:[0-9]+)?(/[a-z0-9._-]+)+:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
CHUNK = 1 << 20


@dataclass
class ImageEntry:
    name: str
    ref: str
    line: int
    namespace: str = "k8s.io"
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    workdir: str = "/"
    path: str = ""  # where the archive lands in the extension
    files: list[Any] = field(default_factory=list)  # bundle.FileEntry


def parse_images(
    value: Any,
    manifest: Path,
    line: Callable[[tuple[Any, ...]], int],
    file_entry: Callable[[Any, tuple[Any, ...]], Any],
) -> list[ImageEntry]:
    """`images:` of sysext.yaml; `file_entry(entry, ypath)` parses one files entry."""

    def err(ypath: tuple[Any, ...], msg: str) -> InputError:
        return InputError(f"{manifest}:{line(ypath)}: {msg}", hint="see sysext/README.md, images")

    if not isinstance(value, list):
        raise err(("images",), "images must be a list of image entries")
    out: list[ImageEntry] = []
    for i, item in enumerate(value):
        yp: tuple[Any, ...] = ("images", i)
        if not isinstance(item, dict):
            raise err(yp, "each image is a mapping with name, ref and files")
        for key in item:
            if key not in IMAGE_KEYS:
                raise err(yp + (key,), f"unknown key {key!r} in image (known: "
                          f"{', '.join(sorted(IMAGE_KEYS))})")  # fmt: skip
        for key in ("name", "ref", "files"):
            if key not in item:
                raise err(yp, f"image without {key}")
        name, ref = item["name"], item["ref"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise err(yp + ("name",), f"name {name!r} may use lowercase letters, digits, _.-")
        if not isinstance(ref, str) or not _REF.match(ref):
            raise err(yp + ("ref",), f"ref {ref!r} is not a full reference like "
                      "registry.example/team/app:1.0")  # fmt: skip
        img = ImageEntry(name=name, ref=ref, line=line(yp))
        if "namespace" in item:
            ns = item["namespace"]
            if not isinstance(ns, str) or not _NAME.match(ns):
                raise err(yp + ("namespace",), f"namespace {ns!r} is not a containerd namespace")
            img.namespace = ns
        for key in ("entrypoint", "cmd", "env"):
            if key in item:
                v = item[key]
                if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
                    raise err(yp + (key,), f"{key} must be a list of strings")
                setattr(img, key, list(v))
        if "workdir" in item:
            if not isinstance(item["workdir"], str) or not item["workdir"].startswith("/"):
                raise err(yp + ("workdir",), "workdir must be an absolute path")
            img.workdir = item["workdir"]
        img.path = f"{PRELOAD_DIR}/{img.namespace}/{img.name}.tar"
        if "path" in item:
            p = item["path"]
            if not isinstance(p, str) or not p.startswith("/usr/") or ".." in p.split("/"):
                raise err(yp + ("path",), "path must be an absolute path under /usr")
            img.path = p
        files = item["files"]
        if not isinstance(files, list) or not files:
            raise err(yp + ("files",), "files must be a non-empty list of entries")
        img.files = [file_entry(f, yp + ("files", j)) for j, f in enumerate(files)]
        out.append(img)
    names = [i.path for i in out]
    dup = next((p for p in names if names.count(p) > 1), None)
    if dup:
        raise err(("images",), f"two images write {dup}")
    return out


# ---------------------------------------------------------------- writing
def _tarinfo(name: str, *, size: int = 0, mode: int = 0o644, kind: bytes = tarfile.REGTYPE,
             link: str = "") -> tarfile.TarInfo:  # fmt: skip
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.type, ti.linkname = size, mode, kind, link
    ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = 0, 0, 0, "", ""
    return ti


class _HashWriter(io.RawIOBase):
    def __init__(self, f: IO[bytes]) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.f.write(b)
        self.h.update(b)
        self.size += len(b)
        return len(b)


def write_layer(tree: Path, out: IO[bytes]) -> tuple[str, int]:
    """The tree as a reproducible tar layer; returns (sha256 hex, size)."""
    from acl_compose.sysext.policy import walk_sorted

    hw = _HashWriter(out)
    root = os.fspath(tree)
    with tarfile.open(fileobj=hw, mode="w|", format=tarfile.PAX_FORMAT) as tar:  # type: ignore[call-overload]
        for rel, st in walk_sorted(root)[1:]:
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISDIR(st.st_mode):
                tar.addfile(_tarinfo(rel + "/", mode=mode, kind=tarfile.DIRTYPE))
            elif stat.S_ISLNK(st.st_mode):
                link = os.readlink(f"{root}/{rel}")
                tar.addfile(_tarinfo(rel, mode=0o777, kind=tarfile.SYMTYPE, link=link))
            elif stat.S_ISREG(st.st_mode):
                with open(f"{root}/{rel}", "rb") as f:
                    tar.addfile(_tarinfo(rel, size=st.st_size, mode=mode), f)
            else:
                raise InputError(f"/{rel}: only files, directories and symlinks go into a layer")
    return hw.h.hexdigest(), hw.size


def _json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def write_archive(
    tree: Path, out: Path, image: ImageEntry, architecture: str, scratch: Path
) -> dict[str, Any]:
    """Write `out` (an OCI image layout in a tar); returns digests for the provenance."""
    work = Path(tempfile.mkdtemp(prefix=".oci-", dir=scratch))
    try:
        layer = work / "layer.tar"
        with open(layer, "wb") as f:
            layer_digest, layer_size = write_layer(tree, f)
        config = {
            "architecture": OCI_ARCH[architecture],
            "os": "linux",
            "config": {
                "Env": image.env or DEFAULT_ENV,
                "Entrypoint": image.entrypoint or None,
                "Cmd": image.cmd or None,
                "WorkingDir": image.workdir,
            },
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created_by": "acl-compose sysext images"}],
        }
        config["config"] = {k: v for k, v in config["config"].items() if v is not None}
        config_blob = _json(config)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": _descriptor(MEDIA_CONFIG, config_blob),
            "layers": [
                {"mediaType": MEDIA_LAYER, "digest": f"sha256:{layer_digest}", "size": layer_size}
            ],
        }
        manifest_blob = _json(manifest)
        tag = image.ref.rsplit(":", 1)[1]
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                dict(
                    _descriptor(MEDIA_MANIFEST, manifest_blob),
                    # containerd takes the full name from its own annotation, tools that follow
                    # the OCI spec take the tag from ref.name.
                    annotations={
                        "io.containerd.image.name": image.ref,
                        "org.opencontainers.image.ref.name": tag,
                    },
                    platform={"architecture": OCI_ARCH[architecture], "os": "linux"},
                )
            ],
        }
        blobs = sorted(
            [
                (hashlib.sha256(config_blob).hexdigest(), config_blob),
                (hashlib.sha256(manifest_blob).hexdigest(), manifest_blob),
            ]
        )
        with (
            open(out, "wb") as f,
            tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tar,
        ):  # type: ignore[call-overload]  # noqa: E501
            for d in ("blobs/", "blobs/sha256/"):
                tar.addfile(_tarinfo(d, mode=0o755, kind=tarfile.DIRTYPE))
            files = [(f"blobs/sha256/{h}", data) for h, data in blobs]
            files += [
                ("index.json", _json(index)),
                ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ]
            layer_name = f"blobs/sha256/{layer_digest}"
            for name, data in sorted(files + [(layer_name, b"")]):
                if name == layer_name:
                    with open(layer, "rb") as lf:
                        tar.addfile(_tarinfo(name, size=layer_size), lf)
                else:
                    tar.addfile(_tarinfo(name, size=len(data)), io.BytesIO(data))
        os.chmod(out, 0o644)
        return {
            "ref": image.ref,
            "namespace": image.namespace,
            "manifest_digest": f"sha256:{hashlib.sha256(manifest_blob).hexdigest()}",
            "config_digest": manifest["config"]["digest"],  # type: ignore[index]
            "layer_digest": f"sha256:{layer_digest}",
        }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def _descriptor(media: str, blob: bytes) -> dict[str, Any]:
    return {"mediaType": media, "digest": f"sha256:{hashlib.sha256(blob).hexdigest()}",
            "size": len(blob)}  # fmt: skip
