"""The host is immutable: no package manager anywhere, /usr read-only from Flatcar's dm-verity.

The package-manager scan runs as root in a private mount namespace over every layer: the merged
view (/usr, /opt and every PATH directory), each merged extension's own image (mounted again,
read-only) and the base /usr and /opt underneath the sysext overlays. A finding names its path
and the layer it came from; any error of the scan fails it.

The verity checks read the device-mapper table of the device mounted on /usr and compare it
with release.json, Flatcar's geometry and the root hash at byte 64 of the kernel on the ESP.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import Any

import pytest

# Commands of package managers (Debian, Fedora/RHEL, SUSE, Arch, Alpine, OpenWrt, Void,
# Gentoo, Nix, Snap/Flatpak) and language-level installers.
PACKAGE_MANAGERS = (
    "apt", "apt-get", "apt-cache", "aptitude", "dpkg", "dpkg-deb",
    "rpm", "rpm-ostree", "dnf", "dnf4", "dnf5", "microdnf", "tdnf", "yum", "zypper",
    "pacman", "apk", "opkg", "xbps-install", "emerge", "ebuild", "equery",
    "nix", "nix-env", "snap", "flatpak", "pip", "pip3", "easy_install", "gem", "npm",
)  # fmt: skip
PACKAGE_DATABASES = (
    "/var/lib/dpkg", "/var/lib/apt", "/var/lib/rpm", "/usr/lib/sysimage/rpm", "/var/lib/dnf",
    "/var/lib/pacman", "/lib/apk/db", "/var/db/pkg",
)  # fmt: skip
# Python's own installers: importable, a Python can install packages into the host.
PYTHON_MODULES = ("pip", "ensurepip")
# bootengine's minimal-init opens /usr with this hash offset (hard-coded), and the tree covers
# this many 4 KiB blocks: an image laid out otherwise does not boot on Flatcar.
FLATCAR_USR_HASH_OFFSET = 1065345024
FLATCAR_USR_DATA_BLOCKS = 260094

# Runs as root in a private mount namespace; prints FOUND/ERROR lines and DONE at the end.
# $1: names, $2: databases, $3: python modules, $4: the PATH directories of core and root,
# then NAME TYPE PATH triples of the merged extensions.
SCAN = r"""
set -u
names=$1 dbs=$2 modules=$3 pathdirs=""
for d in $4; do  # PATH directories the /usr and /opt scans do not already cover
    r=$(readlink -f "$d") || continue
    case "$r" in /usr|/usr/*|/opt|/opt/*) ;; *) pathdirs="$pathdirs $r" ;; esac
done
shift 4
work=$(mktemp -d) errs=$(mktemp)
trap 'rm -f "$errs"; rmdir "$work"/* "$work" 2>/dev/null' EXIT
expr=""
for n in $names; do expr="$expr${expr:+ -o }-name $n"; done
found() { printf 'FOUND\t%s\t%s\t%s\n' "$1" "$2" "$3"; }
error() { printf 'ERROR\t%s\n' "$*"; }

# scan LAYER ROOT DIR...: commands, Python installer modules and databases under ROOT.
scan() {
    layer=$1 root=$2
    shift 2
    for d in "$@"; do
        [ -d "$root$d" ] || continue
        # shellcheck disable=SC2086
        find "$root$d" \( $expr \) \( -type f -o -type l \) -print 2>>"$errs" |
        while IFS= read -r p; do
            case "${p%/*}" in
                */bin|*/sbin|*/libexec) found "$layer" command "${p#"$root"}" ;;
                *) if [ -f "$p" ] && [ -x "$p" ]; then found "$layer" command "${p#"$root"}"; fi ;;
            esac
        done
        find "$root$d" -type d \( -name pip -o -name ensurepip -o -name 'pip-*.dist-info' \) \
            -path '*python*' -print 2>>"$errs" |
        while IFS= read -r p; do found "$layer" python-module "${p#"$root"}"; done
    done
    for db in $dbs; do
        if [ -e "$root$db" ] || [ -L "$root$db" ]; then found "$layer" database "$db"; fi
    done
}

# 1. The merged view, as users and services see it; every Python's importable installers.
scan merged "" /usr /opt $pathdirs
find /usr /opt -regextype posix-extended -regex '.*/python[0-9.]*' -type f -perm /111 \
    -print 2>>"$errs" |
while IFS= read -r py; do
    for m in $modules; do
        out=$("$py" -E -s -c "import importlib.util as u, sys
s = u.find_spec(sys.argv[1])
print(s.origin if s else '')" "$m" 2>&1) || { error "$py cannot run: $out"; continue; }
        if [ -n "$out" ]; then found merged python-module "$out (import $m with $py)"; fi
    done
done

# 2. Each merged extension's own tree: its image mounted again read-only (through its
#    dm-verity device when it has one), or its directory.
while [ $# -ge 3 ]; do
    name=$1 type=$2 path=$3
    shift 3
    case "$type" in
        directory|subvolume) scan "extension $name" "$path" /usr /opt; continue ;;
    esac
    real=$(readlink -f "$path")
    # The loop device by the file's identity (inode, device), not backing_file's path: images
    # opened in systemd-sysext's private mount namespace show a path relative to their
    # filesystem once that namespace is gone (/extensions/x.raw for OEM:/extensions/x.raw).
    want=$(stat -L -c '%i %Hd:%Ld' "$real")
    dev=""
    for b in /sys/block/loop*/loop/backing_file; do
        [ -r "$b" ] || continue
        loop=${b%/loop/backing_file}
        got=$(losetup -n -O BACK-INO,BACK-MAJ:MIN "/dev/${loop##*/}" | xargs)
        [ "$got" = "$want" ] || continue
        for part in "$loop" "$loop"/"${loop##*/}"p*; do
            [ -d "$part" ] || continue
            for h in "$part"/holders/dm-*; do [ -e "$h" ] && dev=/dev/${h##*/}; done
            [ -n "$dev" ] && break
            case "$(blkid -p -s TYPE -o value "/dev/${part##*/}" 2>/dev/null)" in
                erofs|squashfs|ext4|btrfs|xfs) dev=/dev/${part##*/}; break ;;
            esac
        done
        break
    done
    if [ -z "$dev" ]; then
        error "extension $name is merged, but $real is on no loop device"
        continue
    fi
    mkdir "$work/$name"
    if ! out=$(mount -o ro "$dev" "$work/$name" 2>&1); then
        error "mount $dev ($name): $out"
        continue
    fi
    scan "extension $name" "$work/$name" /usr /opt
    umount "$work/$name"
done

# 3. The base underneath: take the sysext overlays off /usr and /opt (this namespace only).
for h in /usr /opt; do
    while [ "$(findmnt -n -r -o SOURCE,FSTYPE -M "$h" | tail -n 1)" = "sysext overlay" ]; do
        umount -l "$h" || { error "cannot unmount the sysext overlay on $h"; break; }
    done
done
scan base "" /usr /opt

while IFS= read -r line; do error "$line"; done <"$errs"
echo DONE
"""


@dataclass(frozen=True)
class Finding:
    layer: str  # merged, base, or "extension NAME"
    kind: str  # command, python-module, database
    path: str


def extensions(host: Any) -> list[tuple[str, str, str]]:
    """(name, type, path) of every extension `systemd-sysext` reports as merged."""
    merged: set[str] = set()
    for line in host.check_output("systemd-sysext status --no-legend").splitlines():
        parts = line.split()
        if parts and parts[0].startswith("/"):
            parts = parts[1:]  # the hierarchy column; continuation lines have only the name
        if parts and parts[0] != "none":
            merged.add(parts[0])
    out = []
    for line in host.check_output("systemd-sysext list --no-legend").splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0] in merged:
            out.append((parts[0], parts[1], parts[2]))
    listed = {name for name, _, _ in out}
    assert listed == merged, f"merged {sorted(merged)}, but `systemd-sysext list` shows {listed}"
    return out


@pytest.fixture(scope="module")
def scan(host: Any, root_run: Any) -> list[Finding]:
    """Every package-manager piece in every layer (the scan's errors fail the tests)."""
    paths = set(host.check_output("echo $PATH").split(":"))
    paths |= set(root_run("echo $PATH").stdout.strip().split(":"))
    args = [" ".join(PACKAGE_MANAGERS), " ".join(PACKAGE_DATABASES), " ".join(PYTHON_MODULES)]
    args.append(" ".join(sorted(p for p in paths if p)))
    for ext in extensions(host):
        args += ext
    command = "unshare -m --propagation private sh -c " + shlex.quote(SCAN) + " scan "
    result = root_run(command + " ".join(shlex.quote(a) for a in args))
    lines = result.stdout.splitlines()
    errors = [ln.split("\t", 1)[1] for ln in lines if ln.startswith("ERROR\t")]
    assert result.rc == 0 and lines and lines[-1] == "DONE", (
        f"the scan did not finish (exit {result.rc}): {result.stderr.strip()[-2000:]}"
    )
    assert not errors, "the package-manager scan hit errors:\n" + "\n".join(errors)
    return [Finding(*ln.split("\t")[1:4]) for ln in lines if ln.startswith("FOUND\t")]


def report(findings: list[Finding]) -> str:
    """One line per path with every layer it is in, e.g. `/usr/bin/pip3 (extension x)`."""
    layers: dict[str, list[str]] = {}
    for f in findings:
        where = f.layer
        if f.layer == "base":
            where = "/usr" if f.path.startswith("/usr/") else "ROOT"
        layers.setdefault(f.path, [])
        if where != "merged" and where not in layers[f.path]:
            layers[f.path].append(where)
    return "\n".join(
        f"{path} ({', '.join(where) or 'merged view only'})"
        for path, where in sorted(layers.items())
    )


def test_no_package_manager_on_path_or_in_usr_opt(scan: list[Finding]) -> None:
    found = [f for f in scan if f.kind == "command"]
    assert not found, "package manager commands present:\n" + report(found)


def test_no_python_package_installer(scan: list[Finding]) -> None:
    found = [f for f in scan if f.kind == "python-module"]
    assert not found, f"Python installer modules {PYTHON_MODULES} present:\n" + report(found)


def test_no_package_databases(scan: list[Finding]) -> None:
    found = [f for f in scan if f.kind == "database"]
    assert not found, "package databases present:\n" + report(found)


# -- /usr: read-only, from Flatcar's dm-verity ------------------------------------------------


def usr_mounts(host: Any) -> list[dict[str, str]]:
    """Every mount stacked on /usr, lowest first (the base, then sysext overlays)."""
    mounts = []
    for line in host.file("/proc/self/mountinfo").content_string.splitlines():
        fields = line.split()
        sep = fields.index("-")
        if fields[4] == "/usr":
            mounts.append(
                {"options": fields[5], "fstype": fields[sep + 1], "source": fields[sep + 2]}
            )
    return mounts


@dataclass
class VerityDevice:
    name: str
    table: list[str]  # `dmsetup table` fields after "start length"
    status: str  # `dmsetup status` last field: V valid, C corrupted

    @property
    def target(self) -> str:
        return self.table[0]

    def field(self, i: int) -> str:
        """Verity table fields: version data_dev hash_dev data_bs hash_bs data_blocks
        hash_start algorithm digest salt (opt args)."""
        return self.table[1 + i]


def dm_device(root_run: Any, name: str) -> VerityDevice:
    table = root_run(f"dmsetup table {shlex.quote(name)}")
    status = root_run(f"dmsetup status {shlex.quote(name)}")
    assert table.rc == 0 and status.rc == 0, table.stderr + status.stderr
    return VerityDevice(name, table.stdout.split()[2:], status.stdout.split()[-1])


def partition_info(root_run: Any, majmin: str) -> dict[str, str]:
    """blkid's low-level probe of a block device (by major:minor): PART_ENTRY_* from the GPT."""
    out = root_run(f"blkid -p -o export /dev/block/{majmin}").stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def usr_device(host: Any, root_run: Any) -> VerityDevice | str:
    """The dm device under /usr, or a sentence saying what /usr comes from instead."""
    mounts = usr_mounts(host)
    if not mounts:
        return "nothing is mounted on /usr"
    base = mounts[0]  # sysexts stack an overlay above the sealed base
    source = root_run(f"readlink -f {shlex.quote(base['source'])}").stdout.strip()
    if not source.startswith("/dev/dm-"):
        return f"/usr is {base['fstype']} on {base['source']}, not on a device-mapper device"
    name = host.file(f"/sys/block/{source[5:]}/dm/name").content_string.strip()
    return dm_device(root_run, name)


def test_usr_mounted_read_only(host: Any) -> None:
    mounts = usr_mounts(host)
    assert mounts, "nothing is mounted on /usr"
    for m in mounts:
        assert "ro" in m["options"].split(","), f"/usr mount is writable: {m}"


def test_usr_backed_by_dm_verity(
    root_run: Any, usr_device: VerityDevice | str, release: dict[str, Any] | None
) -> None:
    """Target verity, data and hash on USR-A (by PARTUUID), Flatcar's geometry, valid."""
    assert isinstance(usr_device, VerityDevice), usr_device
    dev = usr_device
    assert dev.target == "verity", f"/usr is on a {dev.target} device, not verity: {dev.table}"
    data, hashdev = dev.field(1), dev.field(2)
    part = partition_info(root_run, data)
    want = ((release or {}).get("usr") or {}).get("partuuid")
    assert part.get("PART_ENTRY_NAME") == "USR-A", f"/usr data device {data} is {part}"
    if want:
        assert part.get("PART_ENTRY_UUID", "").lower() == want.lower(), (part, want)
    assert hashdev == data, f"hash tree on {hashdev}, not inside USR-A ({data})"
    hash_bs, blocks, hash_start = int(dev.field(4)), int(dev.field(5)), int(dev.field(6))
    # With a superblock at the hash offset, the tree starts one hash block after it.
    offset = (hash_start - 1) * hash_bs
    assert offset == FLATCAR_USR_HASH_OFFSET, f"hash offset {offset}, Flatcar's is 1065345024"
    assert blocks == FLATCAR_USR_DATA_BLOCKS, f"{blocks} data blocks, Flatcar's /usr has 260094"
    usr = (release or {}).get("usr") or {}
    recorded = {
        "hash_offset": offset,
        "data_blocks": blocks,
        "hash_algorithm": dev.field(7),
        "salt": dev.field(9),
        "hash_block_size": hash_bs,
        "data_block_size": int(dev.field(3)),
    }
    differs = {k: (v, usr[k]) for k, v in recorded.items() if k in usr and usr[k] != v}
    assert not differs, f"dm table differs from release.json (table, release): {differs}"
    assert dev.status == "V", f"dm-verity reports /usr corrupted (status {dev.status})"


def test_usr_root_hash_matches_release_and_kernel(
    root_run: Any, usr_device: VerityDevice | str, release: dict[str, Any] | None
) -> None:
    """The root hash in force is release.json's and the one at byte 64 of the booted kernel."""
    assert isinstance(usr_device, VerityDevice), usr_device
    active = usr_device.field(8)
    slot = partition_info(root_run, usr_device.field(1)).get("PART_ENTRY_NAME", "USR-A")
    kernel = "vmlinuz-" + slot[-1].lower()  # USR-A boots flatcar/vmlinuz-a
    # The ESP may be mounted already (Flatcar's boot.automount): read it there, since vfat
    # refuses a second, read-only mount of a device mounted read-write.
    read = root_run(
        "unshare -m --propagation private sh -ec '"
        "dev=$(readlink -f /dev/disk/by-partlabel/EFI-SYSTEM); "
        'esp=$(findmnt -n -o TARGET -S "$dev" | head -n 1); '
        'if [ -z "$esp" ]; then mount -o ro "$dev" /mnt; esp=/mnt; fi; '
        f'dd if="$esp/flatcar/{kernel}" bs=1 skip=64 count=64 status=none\''
    )
    assert read.rc == 0, f"cannot read flatcar/{kernel} on the ESP: {read.stderr}"
    assert active == read.stdout, f"/usr root hash {active}, kernel {kernel} says {read.stdout!r}"
    if release is not None:
        want = (release.get("usr") or {}).get("root_hash")
        assert active == want, f"/usr root hash {active}, release.json says {want}"


def test_no_verity_corruption_reported(root_run: Any) -> None:
    """No dm-verity device is marked corrupted and the kernel logged no corrupted block."""
    status = root_run("dmsetup status --target verity")
    assert status.rc == 0, status.stderr
    lines = [ln for ln in status.stdout.splitlines() if ": " in ln]  # not "No devices found"
    bad = [ln for ln in lines if ln.split()[-1] != "V"]
    assert not bad, f"dm-verity devices not valid: {bad}"
    log = root_run("dmesg")
    assert log.rc == 0, log.stderr
    corrupt = [ln for ln in log.stdout.splitlines() if "verity" in ln and "corrupted" in ln]
    assert not corrupt, "the kernel reports dm-verity corruption:\n" + "\n".join(corrupt)


def test_writing_under_usr_fails(host: Any, root_run: Any) -> None:
    result = root_run("touch /usr/.acl-compose-write-test")
    root_run("rm -f /usr/.acl-compose-write-test")
    assert result.rc != 0, "root could write under /usr"
    assert "Read-only file system" in result.stderr, result.stderr
