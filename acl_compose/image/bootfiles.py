"""Kernel, initramfs and command line of a Flatcar-style image, for direct kernel boot.

Read from the image's ESP with mtools at the GPT offset; the command line is GRUB's first
menu entry with its unconditional `set` variables resolved. Direct boot skips firmware and
bootloader logic, so the first-boot flags GRUB would add on a fresh image are added here.
"""

from __future__ import annotations

import re
from pathlib import Path

from acl_compose.errors import InputError
from acl_compose.run import run
from acl_compose.ui import opt

_GRUB_SET = re.compile(r'^set\s+(\w+)=(?:"([^"]*)"|(\S*))\s*$')
_GRUB_VAR = re.compile(r"\$\{?(\w+)\}?")


def _parse_grub_cfg(text: str) -> tuple[str, str | None, list[str]]:
    """(kernel, initrd, args) of the first menu entry, with simple `set` variables resolved.

    Only what GRUB needs no runtime for is resolved: unconditional `set name=value` lines;
    tokens still holding a variable afterwards are dropped.
    """
    variables: dict[str, str] = {}
    kernel, initrd, args = "/flatcar/vmlinuz-a", None, []
    for raw in text.splitlines():
        m = _GRUB_SET.match(raw)
        if m:
            variables[m.group(1)] = m.group(2) if m.group(2) is not None else m.group(3)
            continue
        words = _GRUB_VAR.sub(lambda v: variables.get(v.group(1), v.group(0)), raw).split()
        words = [re.sub(r"^\([^)]*\)", "", w) for w in words]  # drop "($root)" prefixes
        if words and words[0] in ("linux", "linuxefi") and len(words) > 1 and not args:
            kernel, args = words[1], [w for w in words[2:] if "$" not in w]
        elif words and words[0] in ("initrd", "initrdefi") and len(words) > 1 and not initrd:
            initrd = words[1]
    return kernel, initrd, args


def kernel_boot_files(image: Path, dest: Path) -> tuple[Path, Path | None, str]:
    """Kernel, initramfs and command line from the image's ESP (grub.cfg), via mtools."""
    from acl_compose.image import gpt  # the coordinator's GPT reader

    disk = gpt.read(image)
    esp = disk.by_label("EFI-SYSTEM")
    if esp is None:
        raise InputError(
            f"{image}: no EFI-SYSTEM partition",
            hint=f"{opt('--firmware kernel', 'a direct kernel boot')} needs an ESP",
        )
    spec = f"{image}@@{esp.offset}"
    cfg_text = ""
    for cand in ("::/EFI/boot/grub.cfg", "::/boot/grub/grub.cfg", "::/flatcar/grub/grub.cfg"):
        proc = run(["mtype", "-i", spec, cand], check=False)
        if proc.returncode == 0:
            cfg_text = proc.stdout.decode(errors="replace")
            break
    kernel_rel, initrd_rel, args = _parse_grub_cfg(cfg_text)
    # GRUB adds the first-boot flags while the ESP's flatcar/first_boot exists, as it does
    # on a fresh image (the overlay starts fresh every time).
    for key, extra in (
        ("console=ttyS0", "console=ttyS0,115200n8"),
        ("ignition.firstboot=", "ignition.firstboot=1"),
        ("flatcar.first_boot=", "flatcar.first_boot=detected"),
    ):
        if not any(a.startswith(key) for a in args):
            args.append(extra)
    kernel = dest / "vmlinuz"
    run(["mcopy", "-o", "-i", spec, f"::{kernel_rel}", str(kernel)])
    initrd = None
    if initrd_rel:
        initrd = dest / "initrd"
        run(["mcopy", "-o", "-i", spec, f"::{initrd_rel}", str(initrd)])
    return kernel, initrd, " ".join(args)
