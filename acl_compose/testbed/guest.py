"""The testbed guest: a Debian bookworm tree shaped like Flatcar's /usr and ROOT.

Steps: mmdebstrap (cached as a tarball keyed by the package list), extract, customise
(our files, user `core`, os-release, units), dracut in a chroot with Debian's Ignition
module, record packages, remove the package manager, split into /usr and ROOT trees.

As Flatcar's image build does, everything lives in /usr: /etc becomes /usr/share/flatcar/etc
(the lower layer of the /etc overlay the initrd mounts), the rest of the root tree is recorded
as tmpfiles.d lines the initrd replays (baselayout.conf, base_image_var.conf), and ROOT holds
only the mount points boot, usr and oem.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from acl_compose.run import run
from acl_compose.util import atomic_file

FILES = Path(__file__).parent / "files"

SUITE = "bookworm"
# FACTS 8's known-good list, plus squashfs-tools and sudo (Flatcar's core has NOPASSWD sudo)
# and gdisk (sgdisk: the initrd's disk-uuid randomizes the disk GUID as Flatcar's does).
PACKAGES = (
    "systemd,systemd-sysv,udev,openssh-server,linux-image-cloud-amd64,dracut-core,"
    "dracut-network,isc-dhcp-client,iputils-arping,curl,ignition,cryptsetup-bin,kmod,"
    "iproute2,btrfs-progs,e2fsprogs,erofs-utils,squashfs-tools,passwd,dbus,sudo,gdisk"
).split(",")
# Units that only cost boot time under TCG (or belong to the removed package manager).
MASK = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "systemd-networkd-wait-online.service",
    "getty@tty1.service",
)
ENABLE = (
    "systemd-networkd.service",
    "acl-sshd-keygen.service",
    "acl-ignition-presets.service",
    "ssh.service",
    # Flatcar merges /etc/extensions at boot; Debian leaves the unit disabled.
    "systemd-sysext.service",
    # ... and then starts the units the extensions enable (Flatcar's ensure-sysext).
    "ensure-sysext.service",
)
PACKAGE_MANAGER = ("apt", "dpkg")
# Units in /usr enabled from /usr, as Flatcar ships them (flatcar/init).
USR_WANTS = {"local-fs.target": ("boot.automount", "oem.mount")}
# What ROOT keeps when the image is built (Flatcar: mount points and e2fsck's lost+found).
ROOT_KEEP = ("boot", "usr", "oem")


@dataclass
class GuestTrees:
    usr: Path  # becomes USR-A (mounted at /usr)
    root: Path  # becomes ROOT (/), with an empty /usr mount point
    kernel: Path
    initrd: Path
    kernel_version: str
    packages_txt: str


def bootstrap_key() -> str:
    return hashlib.sha256(f"{SUITE}\n{','.join(PACKAGES)}".encode()).hexdigest()[:16]


def bootstrap(cache: Path, source_date_epoch: int) -> Path:
    """mmdebstrap tarball of the package list, reused across builds (no re-download)."""
    tar = cache / "bootstrap" / f"{SUITE}-{bootstrap_key()}.tar"
    if tar.exists():
        return tar
    tar.parent.mkdir(parents=True, exist_ok=True)
    tmp = tar.with_name(f".{tar.name}.{os.getpid()}.tmp")
    try:
        run(
            [
                "mmdebstrap",
                "--variant=minbase",
                "--mode=root",
                "--format=tar",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                tmp,
            ],
            env={"SOURCE_DATE_EPOCH": str(source_date_epoch)},
            hint="mmdebstrap needs root and access to the Debian mirror in /etc/apt/sources.list",
        )
        os.replace(tmp, tar)
    finally:
        tmp.unlink(missing_ok=True)
    return tar


def extract(tar: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    run(["tar", "-C", dest, "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf", tar])


def chroot(root: Path, *argv: str, env: dict[str, str] | None = None) -> None:
    """Run a command in `root` with /proc, /sys, /dev mounted in a private mount namespace.

    The namespace dies with the command, so nothing stays mounted on the host.
    """
    script = (
        'r="$1"; shift; mount -t proc proc "$r/proc" && mount -t sysfs sys "$r/sys" && '
        'mount --rbind /dev "$r/dev" && mount -t tmpfs tmpfs "$r/tmp" && '
        'mount -t tmpfs tmpfs "$r/run" && exec chroot "$r" "$@"'
    )
    run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
            root,
            *argv,
        ],
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", **(env or {})},
    )


def _copy_files(src: Path, dest: Path) -> None:
    """Copy a file tree, owned by root, keeping modes (sudoers wants 0440)."""
    for path in sorted(src.rglob("*")):
        target = dest / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
        mode = 0o755 if os.access(path, os.X_OK) else 0o644
        if "sudoers.d" in target.parts:
            mode = 0o440
        os.chmod(target, mode)
        os.chown(target, 0, 0)


def os_release(version: str, build_id: str) -> str:
    return (
        'NAME="Flatcar Container Linux"\n'
        "ID=flatcar\n"
        "ID_LIKE=coreos\n"
        f"VERSION={version}\n"
        f"VERSION_ID={version}\n"
        f"BUILD_ID={build_id}\n"
        "SYSEXT_LEVEL=1.0\n"
        f'PRETTY_NAME="Flatcar Container Linux {version} (acl-compose testbed)"\n'
        'ANSI_COLOR="38;5;75"\n'
        'HOME_URL="https://flatcar.org/"\n'
        'FLATCAR_BOARD="amd64-usr"\n'
        f'CPE_NAME="cpe:2.3:o:flatcar-linux:flatcar_linux:{version}:*:*:*:*:*:*:*"\n'
    )


def customise(root: Path, version: str, build_id: str) -> None:
    _copy_files(FILES / "rootfs", root)
    (root / "usr/lib/os-release").write_text(os_release(version, build_id))
    etc_release = root / "etc/os-release"
    etc_release.unlink(missing_ok=True)
    etc_release.symlink_to("../usr/lib/os-release")
    (root / "usr/share/flatcar").mkdir(parents=True, exist_ok=True)
    (root / "usr/share/flatcar/release").write_text(
        f"FLATCAR_RELEASE_VERSION={version}\nFLATCAR_RELEASE_BOARD=amd64-usr\n"
        "FLATCAR_RELEASE_APPID={e96281a6-d1af-4bde-9a0a-97b76e56dc57}\n"
    )
    (root / "etc/hostname").write_text("localhost\n")
    (root / "etc/machine-id").write_text("")  # generated on first boot
    for d in ("oem", "boot"):
        (root / d).mkdir(exist_ok=True)
    # Shared host keys would be identical on every VM: generate them on first boot instead.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    chroot(root, "useradd", "--create-home", "--shell", "/bin/bash", "--groups", "sudo", "core")
    chroot(root, "systemctl", "enable", *ENABLE)
    chroot(root, "systemctl", "mask", *MASK)
    for target, units in USR_WANTS.items():
        wants = root / "usr/lib/systemd/system" / f"{target}.wants"
        wants.mkdir(parents=True, exist_ok=True)
        for unit in units:
            (wants / unit).symlink_to(f"../{unit}")
    # Trim what a container host does not need (smaller /usr: faster build and boot).
    for d in ("usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt"):
        shutil.rmtree(root / d, ignore_errors=True)
        (root / d).mkdir(parents=True, exist_ok=True)


def kernel_version(root: Path) -> str:
    versions = sorted(p.name for p in (root / "usr/lib/modules").iterdir())
    return versions[-1]


def make_initramfs(root: Path, kver: str) -> Path:
    mod = root / "usr/lib/dracut/modules.d/50acl-testbed"
    shutil.rmtree(mod, ignore_errors=True)
    _copy_files(FILES / "dracut/50acl-testbed", mod)
    out = f"/boot/initrd.img-{kver}"
    chroot(
        root,
        "dracut",
        "--force",
        "--no-hostonly",
        "--no-hostonly-cmdline",
        "--reproducible",
        "--add",
        "ignition acl-testbed",
        "--omit",
        "i18n plymouth kernel-modules kernel-modules-extra",
        "--kver",
        kver,
        out,
    )
    return root / out.lstrip("/")


def packages_txt(root: Path) -> str:
    """Flatcar's format is `category/name-version::repo`; ours names Debian packages."""
    proc = run(
        [
            "dpkg-query",
            f"--admindir={root / 'var/lib/dpkg'}",
            "-W",
            "-f=debian/${Package}-${Version}::" + SUITE + "\\n",
        ]
    )
    return "".join(sorted(proc.stdout.decode().splitlines(keepends=True)))


def remove_package_manager(root: Path) -> None:
    """Delete apt and dpkg as Flatcar has none: binaries, databases, configs."""
    info = root / "var/lib/dpkg/info"
    for pkg in PACKAGE_MANAGER:
        listing = info / f"{pkg}.list"
        if not listing.exists():
            listing = info / f"{pkg}:amd64.list"
        if not listing.exists():
            continue
        for line in listing.read_text().splitlines():
            p = root / line.lstrip("/")
            # Directories (and merged-/usr links like /lib -> usr/lib) belong to others too.
            if p.is_dir():
                continue
            if p.is_symlink() or p.is_file():
                p.unlink()
    for d in ("var/lib/dpkg", "var/lib/apt", "var/cache/apt", "var/log/apt", "etc/apt", "etc/dpkg"):
        shutil.rmtree(root / d, ignore_errors=True)
    for f in ("var/log/dpkg.log", "var/log/alternatives.log", "var/log/bootstrap.log"):
        (root / f).unlink(missing_ok=True)
    # Enablement links pointing at removed units (apt-daily.timer...) would only log errors.
    for link in (root / "etc/systemd/system").rglob("*"):
        if link.is_symlink() and str(os.readlink(link)) != "/dev/null":
            target = os.readlink(link)
            resolved = root / target.lstrip("/") if target.startswith("/") else link.parent / target
            if not resolved.exists():
                link.unlink()


def split(root: Path, work: Path, kver: str) -> tuple[Path, Path, Path]:
    """Move the kernel out of /boot, /etc into /usr (the overlay's lower layer), record the
    rest of the root tree as tmpfiles.d lines in /usr, and /usr out of `root`, which keeps
    only the mount points (ROOT as Flatcar's image build leaves it)."""
    kernel = work / "vmlinuz"
    initrd = work / "initrd"
    shutil.move(root / f"boot/vmlinuz-{kver}", kernel)
    shutil.move(root / f"boot/initrd.img-{kver}", initrd)
    for p in (root / "boot").iterdir():
        p.unlink()
    for name in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        p = root / name
        if p.is_symlink():
            p.unlink()
    flatcar = root / "usr/share/flatcar"
    shutil.rmtree(flatcar / "etc", ignore_errors=True)
    os.replace(root / "etc", flatcar / "etc")
    tmpfiles = root / "usr/lib/tmpfiles.d"
    (tmpfiles / "baselayout.conf").write_text(baselayout(root))
    (tmpfiles / "base_image_var.conf").write_text(tmpfiles_lines(root, "var"))
    usr = work / "usr"
    os.replace(root / "usr", usr)
    for entry in root.iterdir():
        if entry.name in ROOT_KEEP and entry.is_dir() and not entry.is_symlink():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    for name in ROOT_KEEP:
        (root / name).mkdir(mode=0o755, exist_ok=True)
    return usr, kernel, initrd


def _line(root: Path, path: Path) -> str | None:
    """One tmpfiles.d line recreating `path` (a directory or symlink), numeric owners: the
    initrd applies them before /etc (and its passwd) is mounted."""
    rel = "/" + path.relative_to(root).as_posix()
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        return f"L {rel} - - - - {os.readlink(path)}"
    if stat.S_ISDIR(st.st_mode):
        return f"d {rel} {stat.S_IMODE(st.st_mode):04o} {st.st_uid} {st.st_gid} -"
    return None  # files are not recreated (Flatcar records directories only)


def tmpfiles_lines(root: Path, top: str) -> str:
    """The directories and symlinks under /`top`, parents first."""
    lines = [_line(root, root / top)]
    for dirpath, dirnames, filenames in os.walk(root / top):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            lines.append(_line(root, Path(dirpath) / name))
    return "".join(f"{ln}\n" for ln in lines if ln)


def baselayout(root: Path) -> str:
    """The top of the root tree (merged-/usr links, /proc, /tmp, ...) and /home, /root."""
    lines = ["# The root tree of the testbed image, recreated by the initrd on every boot."]
    for entry in sorted(root.iterdir()):
        if entry.name in ("usr", "etc", "var"):
            continue
        if entry.name in ("home", "root"):
            lines.append(tmpfiles_lines(root, entry.name).rstrip("\n"))
        else:
            lines.append(_line(root, entry) or "")
    return "\n".join(ln for ln in lines if ln) + "\n"


def build_guest(tar: Path, work: Path, version: str, build_id: str) -> GuestTrees:
    root = work / "rootfs"
    extract(tar, root)
    customise(root, version, build_id)
    kver = kernel_version(root)
    make_initramfs(root, kver)
    pkgs = packages_txt(root)
    remove_package_manager(root)
    usr, kernel, initrd = split(root, work, kver)
    return GuestTrees(
        usr=usr, root=root, kernel=kernel, initrd=initrd, kernel_version=kver, packages_txt=pkgs
    )


def contents_txt(trees: GuestTrees) -> str:
    """A listing like Flatcar's image_contents.txt: mode, owner, size, path (and link target)."""
    lines = []
    for base, prefix in ((trees.root, "."), (trees.usr, "./usr")):  # ROOT: mount points only
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                p = Path(dirpath) / name
                st = p.lstat()
                rel = f"{prefix}/{p.relative_to(base)}"
                line = f"{stat.filemode(st.st_mode)} {st.st_uid}/{st.st_gid} {st.st_size:>10} {rel}"
                if stat.S_ISLNK(st.st_mode):
                    line += f" -> {os.readlink(p)}"
                lines.append(line)
    return "\n".join(lines) + "\n"


def write_text(path: Path, text: str) -> None:
    with atomic_file(path) as f:
        f.write(text.encode())
