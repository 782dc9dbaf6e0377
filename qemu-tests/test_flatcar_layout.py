"""The host is laid out and booted as Flatcar is: /etc overlay over ROOT, the OEM partition's
platform sysext, booted by the firmware asked for through GRUB, GRUB's command line without
extra arguments, first boot recorded, disk GUID."""

from __future__ import annotations

from typing import Any

FLATCAR_DISK_GUID = "00000000-0000-0000-0000-000000000001"


def test_etc_is_flatcars_overlay_with_root_upper(host: Any, root_run: Any) -> None:
    """/etc = overlay of /usr/share/flatcar/etc, with ROOT:/etc as the writable upper layer."""
    fstype, options = host.check_output("findmnt -n -o FSTYPE,OPTIONS /etc").split()
    opts = dict(o.split("=", 1) if "=" in o else (o, "") for o in options.split(","))
    assert fstype == "overlay", (fstype, options)
    assert opts["lowerdir"].endswith("/usr/share/flatcar/etc"), options
    assert opts["upperdir"].endswith("/etc") and "/usr/" not in opts["upperdir"], options
    # What is written to /etc lands on ROOT; what only the image ships stays in /usr. A bind
    # mount of / shows ROOT without the overlay.
    probe = "/etc/acl-overlay-probe"
    script = (
        f"echo upper > {probe} && mkdir -p /run/acl-root && mount --bind / /run/acl-root && "
        f"cat /run/acl-root{probe}; test -e /run/acl-root/etc/os-release && echo LEAK; "
        f"umount /run/acl-root; rm -f {probe}"
    )
    result = root_run(script)
    assert result.stdout.split() == ["upper"], result.stdout + result.stderr
    assert host.file("/etc/os-release").exists  # from the lower layer


# /sys/class/dmi/id/bios_vendor: what QEMU's firmwares put in the SMBIOS table (upstream
# OVMF says "EDK II", Debian's "EFI Development Kit II / OVMF").
OVMF = ("EDK II", "EFI Development Kit II / OVMF")
FIRMWARE_VENDORS = {"uefi": OVMF, "bios": ("SeaBIOS",), "kernel": ("SeaBIOS",)}


def test_booted_by_the_requested_firmware(host: Any, booted_firmware: str) -> None:
    """The firmware the harness asked for booted the guest, and (but for a direct kernel boot)
    it ran GRUB: UEFI leaves the EFI runtime in /sys/firmware/efi, SeaBIOS does not, and GRUB's
    `linux` puts BOOT_IMAGE= first on the kernel command line (QEMU's -kernel does not)."""
    vendor = host.file("/sys/class/dmi/id/bios_vendor").content_string.strip()
    efi = host.file("/sys/firmware/efi").is_directory
    first = host.file("/proc/cmdline").content_string.split()[0]
    seen = f"firmware vendor {vendor!r}, EFI runtime {efi}, command line begins {first!r}"
    assert vendor in FIRMWARE_VENDORS[booted_firmware], f"booted as {booted_firmware}: {seen}"
    assert efi == (booted_firmware == "uefi"), f"booted as {booted_firmware}: {seen}"
    grub = first == "BOOT_IMAGE=/flatcar/vmlinuz-a"
    assert grub == (booted_firmware != "kernel"), f"booted as {booted_firmware}: {seen}"


def test_kernel_command_line_is_grubs(host: Any) -> None:
    """Flatcar's GRUB arguments, nothing the testbed made up."""
    args = host.file("/proc/cmdline").content_string.split()
    keys = {a.split("=", 1)[0] for a in args}
    assert {"mount.usr", "verity.usr", "verity.usrhash", "root", "flatcar.oem.id"} <= keys, args
    assert "mount.usr=/dev/mapper/usr" in args and "rootflags=rw" in args
    made_up = keys & {"ignition.firstboot", "ignition.platform.id", "verity.usrhashoffset",
                      "mount.usrfstype", "rootfstype", "usrhash"}  # fmt: skip
    assert not made_up, args


def test_first_boot_recorded(host: Any) -> None:
    """The initrd removed the ESP's flatcar/first_boot after Ignition (ignition-quench)."""
    listing = host.check_output("ls /boot/flatcar")
    assert "vmlinuz-a" in listing.split(), listing
    assert "first_boot" not in listing.split(), listing


def test_disk_guid_randomized(host: Any, root_run: Any) -> None:
    out = root_run("sgdisk -p $(lsblk -no PKNAME $(findmnt -no SOURCE /) | sed 's|^|/dev/|')")
    assert out.rc == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if ln.startswith("Disk identifier"))
    assert FLATCAR_DISK_GUID not in line, line


def test_oem_sysext_active(host: Any) -> None:
    """The platform's OEM sysext is linked by the initrd and merged (an OEM partition without
    one, as Flatcar's before 3760, has nothing to check)."""
    release = host.file("/oem/oem-release")
    if not release.exists:
        return
    oem_id = next(
        ln.split("=", 1)[1].strip("\"'")
        for ln in release.content_string.splitlines()
        if ln.startswith("ID=")
    )
    if not host.file(f"/oem/sysext/active-oem-{oem_id}").exists:
        return
    version = host.check_output(". /usr/lib/os-release && echo $VERSION")
    link = host.file(f"/etc/extensions/oem-{oem_id}.raw")
    assert link.is_symlink and link.linked_to == f"/oem/sysext/oem-{oem_id}-{version}.raw"
    status = host.check_output("systemd-sysext status --no-legend")
    assert f"oem-{oem_id}" in status, status
