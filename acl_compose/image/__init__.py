"""image: a Flatcar disk image -> its partitions, filesystems, /usr facts, and output files.

`gpt` reads and writes the partition table, `fs` edits filesystems without mounting
(`btrfs_stage` and `btrfs_pin` make its btrfs rebuilds reproducible), `usr` verifies USR-A
against the root hash in the kernel, `osrelease` parses os-release, `bootfiles` reads the
ESP and synthesizes Flatcar's kernel command line, `outputs` writes raw/qcow2/vhd, `btrfs`
reads btrfs trees and restores xattrs offline, `oem` makes and rebuilds the OEM filesystem
as Flatcar makes it, `firmware` tells which firmwares can boot an image, `biosboot` installs
GRUB for BIOS into one.
"""

from acl_compose.util import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "gpt": ["gpt"], "fs": ["fs"], "usr": ["usr"], "osrelease": ["osrelease"],
        "bootfiles": ["bootfiles"], "outputs": ["outputs"], "sparse": ["sparse"],
        "firmware": ["firmware"], "biosboot": ["biosboot"],
        "btrfs": ["btrfs"], "oem": ["oem"],
    },
)  # fmt: skip
