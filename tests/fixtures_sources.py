"""A Debian mirror on loopback for every test session: the product bundles' pinned .debs.

The bundles in sysext/ pin Debian packages (container-runtime's containerd, runc and CNI
plugins; aks-node's catatonit). Each session fetches them once, through the project's own
downloader from the real mirror (deb.debian.org, or $ACL_COMPOSE_DEBIAN_MIRROR), into the
shared cache (~/.cache/acl-compose, content-addressed: later sessions are offline), lays them
out in Debian's pool layout and serves that on loopback. ACL_COMPOSE_DEBIAN_MIRROR then points
every build in the session (in-process and the CLI subprocesses) there, so tests with private
caches neither hit the network nor download the same files again. The server records each
request path (`debian_mirror.requests`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from acl_compose.fetch import httpserve
from acl_compose.sysext import sources
from acl_compose.sysext.bundle import load_bundle

REPO = Path(__file__).resolve().parents[1]
SHARED_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "acl-compose"


@dataclass
class Mirror:
    url: str
    root: Path
    requests: list[str] = field(default_factory=list)


def pinned_debs(bundle_dirs: list[Path]) -> list[dict]:
    """(origin record) of every deb entry of the bundles, images included, real mirror URLs."""
    out = []
    for d in bundle_dirs:
        b = load_bundle(d)
        for e in [*b.files, *(f for i in b.images for f in i.files)]:
            if e.source == "deb":
                out.append(sources.origin_record(e, b, os.environ.get(sources.ENV_DEBIAN_MIRROR)))
    return out


def product_bundles() -> list[Path]:
    """The product's bundles, and the testbed's OEM extensions (built by `testbed build`)."""
    testbed = REPO / "acl_compose" / "testbed" / "files"
    return sorted(p.parent for p in [*(REPO / "sysext").glob("*/sysext.yaml"),
                                     *testbed.glob("oem-*/sysext.yaml")])  # fmt: skip


@pytest.fixture(scope="session", autouse=True)
def debian_mirror(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mirror]:
    from acl_compose import fetch

    root = tmp_path_factory.mktemp("debian-mirror")
    for rec in pinned_debs(product_bundles()):
        blob = fetch.download(rec["url"], sha256=rec["sha256"], cache_dir=SHARED_CACHE)
        dest = root / rec["filename"]
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not dest.exists():
            shutil.copyfile(blob, dest)  # a copy: no test can alter the shared cache through it
    requests: list[str] = []

    class Recording(httpserve.RangeRequestHandler):
        def send_head(self):  # type: ignore[no-untyped-def]
            requests.append(self.path)
            return super().send_head()

    with httpserve.serve(root, handler=Recording) as server:
        mp = pytest.MonkeyPatch()
        mp.setenv(sources.ENV_DEBIAN_MIRROR, server.url.rstrip("/"))
        # bookworm-security's pool (pool/updates/...) is served from the same root.
        mp.setenv(sources.ENV_DEBIAN_SECURITY_MIRROR, server.url.rstrip("/"))
        try:
            yield Mirror(server.url.rstrip("/"), root, requests)
        finally:
            mp.undo()
