"""image.bootfiles: Flatcar's kernel command line synthesized from the image (--firmware kernel).

The expected arguments are those Flatcar's build_library/grub.cfg assembles (plus the
verity.usrhash= its patched GRUB appends), written out here from that file.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import pytest

from acl_compose.errors import InputError
from acl_compose.image import bootfiles, gpt
from acl_compose.image.oem import make_oem_filesystem
from tests.fixtures_compose import build_mini_flatcar

MIB = 1 << 20


def test_grub_variables_resolve_like_oem_configs() -> None:
    text = (
        'set oem_id="azure"\n'
        'set linux_append="flatcar.autologin"\n'
        "if [ x ]; then\n"
        '  set linux_append="$linux_append ignition.config.url=http://x/"\n'
        "fi\n"
        "set linux_console='console=tty1 console=ttyS0,115200n8'\n"
        "serial --unit=0 --speed=115200\n"
    )
    v = bootfiles.grub_variables(text)
    assert v["oem_id"] == "azure"
    assert v["linux_append"] == "flatcar.autologin ignition.config.url=http://x/"
    assert v["linux_console"] == "console=tty1 console=ttyS0,115200n8"


def _with_oem(mini: Path, tmp: Path, files: dict[str, str]) -> Path:
    image = tmp / "disk.bin"
    shutil.copyfile(mini, image)
    tree = tmp / "oem"
    tree.mkdir()
    for name, text in files.items():
        (tree / name).write_text(text)
    part = gpt.read(image).by_label("OEM")
    make_oem_filesystem(tree, tmp / "oem.img", part.size, "OEM", str(uuid.uuid4()))
    gpt.copy_in(image, part, tmp / "oem.img")
    return image


def test_command_line_is_flatcars(mini_flatcar, tmp_path: Path) -> None:
    image = _with_oem(mini_flatcar.path, tmp_path, {
        "grub.cfg": 'set oem_id="qemu"\nset linux_append="flatcar.autologin"\n',
        "oem-release": "ID=ignored-when-grub-cfg-names-one\n",
    })  # fmt: skip
    spec = bootfiles.flatcar_boot_spec(image)
    assert (spec.kernel, spec.initrd) == ("/flatcar/vmlinuz-a", None)
    partuuid = gpt.read(image).by_label("USR-A").guid.lower()
    assert spec.args == [
        "mount.usr=/dev/mapper/usr", f"verity.usr=PARTUUID={partuuid}",
        "rootflags=rw", "mount.usrflags=ro", "consoleblank=0", "root=LABEL=ROOT",
        "console=ttyS0,115200n8", "console=tty0", "flatcar.oem.id=qemu", "flatcar.autologin",
        f"verity.usrhash={mini_flatcar.root_hash}",
    ]  # fmt: skip
    # No made-up arguments: nothing Flatcar's GRUB does not pass.
    assert not [a for a in spec.args if a.startswith(("ignition.", "verity.usrhashoffset"))]
    kernel, initrd, cmdline = bootfiles.kernel_boot_files(image, tmp_path)
    assert kernel.read_bytes()[64:128] == mini_flatcar.root_hash.encode()
    assert initrd is None and cmdline == spec.cmdline


def test_oem_release_names_the_platform_without_grub_cfg(mini_flatcar, tmp_path) -> None:
    image = _with_oem(mini_flatcar.path, tmp_path, {"oem-release": "ID=azure\n"})
    assert "flatcar.oem.id=azure" in bootfiles.flatcar_boot_spec(image).args


def test_first_boot_flag_and_initrd_follow_the_esp(tmp_path: Path) -> None:
    mini = build_mini_flatcar(tmp_path / "disk.bin", tmp_path / "work", esp_extra={
        "flatcar/first_boot": b"", "flatcar/initrd-a": b"initramfs"})  # fmt: skip
    spec = bootfiles.flatcar_boot_spec(mini.path)
    assert "flatcar.first_boot=detected" in spec.args
    assert spec.initrd == "/flatcar/initrd-a"
    _, initrd, _ = bootfiles.kernel_boot_files(mini.path, tmp_path)
    assert initrd is not None and initrd.read_bytes() == b"initramfs"


def test_gptprio_picks_the_usr_partition(mini_flatcar) -> None:
    disk = gpt.read(mini_flatcar.path)
    a, b = disk.by_label("USR-A"), disk.by_label("USR-B")
    prio = lambda p, t, ok: (p << 48) | (t << 52) | (ok << 56)  # noqa: E731
    a.attributes, b.attributes = prio(1, 0, 1), prio(2, 1, 0)
    assert bootfiles.usr_partition(disk) is b  # higher priority with a try left
    b.attributes = prio(2, 0, 0)
    assert bootfiles.usr_partition(disk) is a  # B has no tries left and never succeeded
    a.attributes = 0
    with pytest.raises(InputError, match="no USR partition is bootable"):
        bootfiles.usr_partition(disk)
