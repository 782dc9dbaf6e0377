"""Session fixtures for the compose stage.

- `mini_flatcar`: a small Flatcar-shaped disk image built here in seconds without root
  (vfat ESP with `flatcar/vmlinuz-a` carrying the /usr root hash at byte 64, btrfs USR-A with
  a verity tree after the filesystem, btrfs OEM, ext4 ROOT), for fast tests of fs/compose.
- `release_key`: a release signing key + certificate made by `acl-compose keys generate`.
- `composed_release`: the testbed (served on loopback) composed once per session with the
  product bundles, both product Ignition configs and tests/data/boot/qa-ignition.yaml;
  reused by the boot integration tests, which require every qemu-test to pass on it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

from acl_compose.image import gpt
from acl_compose.image.oem import make_oem_filesystem
from acl_compose.trust import verity

REPO = Path(__file__).resolve().parents[1]
# The product's own bundles and configs, and the fixed time every compose test builds at.
BUNDLES = [REPO / "sysext" / "azure-base", REPO / "sysext" / "aks-node"]
CONFIGS = [REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"]
SDE = {"SOURCE_DATE_EPOCH": "1700000000"}
MIB = 1 << 20
OS_RELEASE = (
    'NAME="Flatcar Container Linux by Kinvolk"\nID=flatcar\nID_LIKE=coreos\n'
    "VERSION=9999.2.0\nVERSION_ID=9999.2.0\nBUILD_ID=mini\nSYSEXT_LEVEL=1.0\n"
)
USR_PARTUUID = "7130C94A-213A-4E5A-8E26-6CCE9662F132"
# The node image's extensions, as examples/manifest.yaml lists them.
PRODUCT_SYSEXTS = ("azure-base", "container-runtime", "aks-node")


def _sh(*argv: str | os.PathLike[str], env: dict[str, str] | None = None) -> None:
    full = dict(os.environ, **(env or {}))
    subprocess.run([str(a) for a in argv], check=True, capture_output=True, env=full)


@dataclass
class MiniImage:
    path: Path
    root_hash: str
    usr_hash_offset: int


def build_oem_sysext(dest: Path, work: Path, platform: str, os_version: str,
                     key: Path | None = None, cert: Path | None = None) -> Path:  # fmt: skip
    """`dest/oem-<platform>.raw`: a small OEM sysext pinned to `os_version` (as Flatcar's)."""
    from acl_compose import sysext

    bundle = work / "bundle"
    bundle.mkdir(parents=True)
    (bundle / "sysext.yaml").write_text(
        f"name: oem-{platform}\nversion: 1.2.3\nos: flatcar\nversion_id: '{os_version}'\n"
        f"files:\n  - path: /usr/share/oem-{platform}/README\n    inline: '{platform} OEM'\n"
    )
    built = sysext.build(bundle, work / "out", key=key, cert=cert)
    shutil.copyfile(built["path"], dest / f"oem-{platform}.raw")
    return dest / f"oem-{platform}.raw"


def build_mini_flatcar(
    out: Path,
    work: Path,
    os_release: str = OS_RELEASE,
    oem_platforms: tuple[str, ...] = ("azure", "qemu"),
    legacy_oem: str | None = None,
    esp_extra: dict[str, bytes] | None = None,
    usr_fs: str = "btrfs",
) -> MiniImage:
    """A ~200 MiB (sparse, ~15 MiB of data) Flatcar-shaped GPT disk image, and beside it the
    OEM sysexts of `oem_platforms` (unsigned); `legacy_oem` makes its OEM partition that
    platform's, the way Flatcar had it before OEM sysexts; `esp_extra` adds files to the ESP
    (path -> content); `usr_fs="ext2"` makes /usr as before Flatcar 3815."""
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    # USR-A: btrfs holding /usr (lib/os-release), shrunk, then the verity tree after it.
    usr_tree = work / "usr"
    (usr_tree / "lib").mkdir(parents=True)
    (usr_tree / "lib" / "os-release").write_text(os_release)
    (usr_tree / "bin").mkdir()
    (usr_tree / "bin" / "hello").write_bytes(os.urandom(300_000))
    usr_img = work / "usr.img"
    if usr_fs == "ext2":  # disk_util FormatExt's options, 16 MiB
        _sh("mke2fs", "-q", "-F", "-t", "ext2", "-b", "4096", "-i", "4096", "-I", "256",
            "-d", usr_tree, usr_img, "4096")  # fmt: skip
        _sh("tune2fs", "-U", "clear", "-m", "0", "-r", "0", usr_img)
    else:
        with open(usr_img, "wb") as f:
            f.truncate(64 * MIB)
        _sh("mkfs.btrfs", "-q", "-f", "-M", "-r", usr_tree, "--shrink", usr_img)
    fs_size = usr_img.stat().st_size
    res = verity.create(usr_img, usr_img, hash_offset=fs_size, data_blocks=fs_size // 4096)
    # Kernel with the root hash at byte 64 (as Flatcar's build does).
    kernel = bytearray(os.urandom(64 * 1024))
    kernel[64:128] = res.root_hash.encode()
    (work / "vmlinuz-a").write_bytes(bytes(kernel))
    esp = work / "esp.img"
    _sh("mkfs.vfat", "-C", "-n", "EFI-SYSTEM", esp, str(33 * 1024))
    mt = {"MTOOLS_SKIP_CHECK": "1"}
    _sh("mmd", "-i", esp, "::/flatcar", env=mt)
    _sh("mcopy", "-i", esp, work / "vmlinuz-a", "::/flatcar/vmlinuz-a", env=mt)
    for i, (name, data) in enumerate(sorted((esp_extra or {}).items())):
        (work / f"esp-extra-{i}").write_bytes(data)
        _sh("mcopy", "-i", esp, work / f"esp-extra-{i}", f"::/{name}", env=mt)
    # OEM: btrfs, empty like the generic image's (no platform yet); each platform's OEM
    # sysext lies beside the image, as in Flatcar's SDK output folder.
    oem_tree = work / "oem"
    oem_tree.mkdir()
    (oem_tree / "README").write_text("generic image: no platform OEM content\n")
    if legacy_oem:  # a platform image of Flatcar before OEM sysexts (3760)
        (oem_tree / "oem-release").write_text(f"ID={legacy_oem}\nVERSION_ID=0.0.1\n")
        (oem_tree / "grub.cfg").write_text(f'set oem_id="{legacy_oem}"\n')
    for platform in oem_platforms:
        build_oem_sysext(out.parent, work / f"oem-{platform}", platform, "9999.2.0")
    oem_img = work / "oem.img"
    # As Flatcar's FormatBtrfs: mixed, label OEM, compression=zlib on everything.
    make_oem_filesystem(oem_tree, oem_img, 32 * MIB, "OEM", str(uuid.uuid4()))
    # ROOT: ext4 with /etc.
    root_tree = work / "root"
    (root_tree / "etc").mkdir(parents=True)
    (root_tree / "etc" / "hostname").write_text("localhost\n")
    root_img = work / "root.img"
    _sh("mke2fs", "-q", "-F", "-t", "ext4", "-L", "ROOT", "-d", root_tree, root_img, "32M")

    sizes = [
        (1, "EFI-SYSTEM", gpt.TYPES["efi"], 34 * MIB, esp),
        (2, "BIOS-BOOT", gpt.TYPES["bios"], 2 * MIB, None),
        (3, "USR-A", gpt.TYPES["flatcar-usr"], 24 * MIB, usr_img),
        (4, "USR-B", gpt.TYPES["flatcar-usr"], 24 * MIB, None),
        (6, "OEM", gpt.TYPES["linux"], 32 * MIB, oem_img),
        (7, "OEM-CONFIG", gpt.TYPES["flatcar-reserved"], 2 * MIB, None),
        (9, "ROOT", gpt.TYPES["flatcar-root"], 34 * MIB, root_img),
    ]
    parts, lba = [], 2048
    for number, name, tguid, size, _src in sizes:
        guid = USR_PARTUUID if name == "USR-A" else str(uuid.uuid4())
        attrs = (1 << 48) | (1 << 56) if name == "USR-A" else 0  # gptprio: priority 1, good
        parts.append(gpt.Partition(number, tguid, guid, name, lba, lba + size // 512 - 1, attrs))
        lba += size // 512
    total = (lba + 2048) * 512
    out.unlink(missing_ok=True)
    gpt.write(out, parts, str(uuid.uuid4()), size=total)
    for part, (_n, _name, _t, _s, src) in zip(parts, sizes, strict=True):
        if src is not None:
            gpt.copy_in(out, part, src)
    shutil.rmtree(work)
    return MiniImage(out, res.root_hash, fs_size)


@pytest.fixture(scope="session")
def mini_flatcar(tmp_path_factory: pytest.TempPathFactory) -> MiniImage:
    d = tmp_path_factory.mktemp("mini-flatcar")
    return build_mini_flatcar(d / "flatcar_production_image.bin", d / "work")


@pytest.fixture(scope="session")
def release_key(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(key, cert) made by the real CLI."""
    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("release-key")
    run_cli("keys", "generate", "-o", d, check=True)
    return d / "release.key", d / "release.crt"


@dataclass
class ComposedRelease:
    out_dir: Path
    release_json: Path
    raw: Path
    cert: Path
    key: Path
    manifest: Path
    release: dict
    vhd: Path | None = None  # the same compose's Azure image (only its OEM partition differs)


def write_manifest(path: Path, *, base: dict, key: Path, cert: Path, name: str = "acl-test",
                   version: str = "1.0.0", sysexts: list[Path] | None = None,
                   ignition: list[Path] | None = None,
                   outputs: tuple[str, ...] = ("raw", "qcow2", "vhd")) -> Path:  # fmt: skip
    import yaml

    doc = {
        "name": name,
        "version": version,
        "base": {k: str(v) for k, v in base.items()},
        "sysexts": [str(p) for p in (sysexts or [])],
        "ignition": [str(p) for p in (ignition or [])],
        "signing": {"key": str(key), "cert": str(cert)},
        "outputs": list(outputs),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class BaseSource:
    base_url: str
    key_file: Path
    fingerprint: str


def _testbed_source(request: pytest.FixtureRequest) -> BaseSource:
    """The testbed release on loopback: the testbed stage's fixtures when they exist, else
    built (cached in the shared testbed cache) and served here."""
    from acl_compose.trust import gpg

    try:
        url = request.getfixturevalue("testbed_server")
        release = request.getfixturevalue("testbed_release")
    except pytest.FixtureLookupError:
        from acl_compose.fetch.httpserve import serve
        from acl_compose.testbed import DEFAULT_VERSION, build

        info = build(Path.home() / ".cache" / "acl-compose", DEFAULT_VERSION)
        server = serve(Path(info["release_dir"]), "127.0.0.1", 0)
        server.__enter__()
        request.addfinalizer(lambda: server.__exit__(None, None, None))
        url, release = server.url, info["release_dir"]
    url = getattr(url, "url", url)
    release_dir = Path(getattr(release, "release_dir", release))
    key_file = release_dir / "testbed-signing-key.asc"
    return BaseSource(str(url), key_file, gpg.key_fingerprints(key_file)[0])


@pytest.fixture(scope="session")
def composed_release(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                     release_key: tuple[Path, Path]) -> ComposedRelease:  # fmt: skip
    """The testbed composed with the product bundles, the product's Ignition configs and the
    QA config (once)."""
    import json

    from tests.conftest import run_cli

    tb = _testbed_source(request)
    key, cert = release_key
    d = tmp_path_factory.mktemp("composed")
    manifest = write_manifest(
        d / "manifest.yaml",
        base={
            "base_url": tb.base_url,
            "release": "current",
            "keyring": tb.key_file,
            "trusted_key": tb.fingerprint,
        },  # fmt: skip
        key=key,
        cert=cert,
        sysexts=[REPO / "sysext" / name for name in PRODUCT_SYSEXTS],
        # Plus the QA config, so the qemu-tests check users, ownership, gzip/base64 contents
        # and hard links too (the product's configs declare none of these).
        ignition=[REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml",
                  REPO / "tests" / "data" / "boot" / "qa-ignition.yaml"],
        # raw and qcow2 for the qemu platform, vhd for azure (the release's oem-azure.raw)
        outputs=("raw", "qcow2", "vhd"),
    )  # fmt: skip
    out = d / "out"
    cache = _compose_cache(tmp_path_factory)
    run_cli("--cache-dir", cache, "compose", manifest, "-o", out, check=True)
    release = json.loads((out / "release.json").read_text())
    files = {(o["format"], o["platform"]): out / o["file"] for o in release["outputs"]}
    return ComposedRelease(out, out / "release.json", files["raw", "qemu"], cert, key, manifest,
                           release, files["vhd", "azure"])  # fmt: skip


@pytest.fixture(scope="session")
def composed_old_release(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory,
                         release_key: tuple[Path, Path]) -> ComposedRelease:  # fmt: skip
    """The old-flavour testbed (ext2 /usr, small partitions, no OEM sysexts) composed with
    the product bundles and configs."""
    import json

    from tests.conftest import run_cli

    build = request.getfixturevalue("testbed_old_build")
    url = request.getfixturevalue("testbed_old_server")
    key, cert = release_key
    d = tmp_path_factory.mktemp("composed-old")
    manifest = write_manifest(
        d / "manifest.yaml",
        base={
            "base_url": url,
            "release": "current",
            "keyring": Path(build["key_file"]),
            "trusted_key": build["fingerprint"],
        },  # fmt: skip
        key=key,
        cert=cert,
        name="acl-old",
        sysexts=[REPO / "sysext" / name for name in PRODUCT_SYSEXTS],
        ignition=[REPO / "ignition" / "base.yaml", REPO / "ignition" / "aks-node.yaml"],
        outputs=("raw",),
    )
    out = d / "out"
    run_cli("--cache-dir", _compose_cache(tmp_path_factory), "compose", manifest, "-o", out,
            check=True)  # fmt: skip
    release = json.loads((out / "release.json").read_text())
    raw = out / next(o["file"] for o in release["outputs"] if o["format"] == "raw")
    return ComposedRelease(out, out / "release.json", raw, cert, key, manifest, release)


def _compose_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache per session: the base and sysexts are reused by every compose in the run."""
    return tmp_path_factory.getbasetemp() / "compose-cache"


@pytest.fixture(scope="session")
def canary_release(composed_release: ComposedRelease,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:  # fmt: skip
    """The testbed composed with the pkgmgr-canary bundle (ships /usr/bin/pip3 and /usr/bin/dpkg
    on purpose): the matrix's planted regression. The boot tests' negative image, bad in more
    ways, is `negative_release` (tests/fixtures_negative.py)."""
    import yaml

    from tests.conftest import run_cli

    d = tmp_path_factory.mktemp("canary")
    base = yaml.safe_load(composed_release.manifest.read_text())["base"]
    manifest = write_manifest(
        d / "manifest.yaml",
        base=base,
        key=composed_release.key,
        cert=composed_release.cert,
        name="acl-canary",
        sysexts=[REPO / "tests" / "data" / "sysext" / "pkgmgr-canary"],
        outputs=("raw",),
    )
    out = d / "out"
    run_cli("--cache-dir", _compose_cache(tmp_path_factory), "compose", manifest, "-o", out,
            check=True)  # fmt: skip
    return out
