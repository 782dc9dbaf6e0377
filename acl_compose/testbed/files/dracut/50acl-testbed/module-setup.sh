#!/bin/bash
# acl-compose testbed: what Flatcar's initramfs does beyond Debian's stock modules.
# - copy baked Ignition configs from the OEM partition before Ignition fetches
# - open /usr with dm-verity from Flatcar's verity.usr= / verity.usrhash= arguments
# - a no-op setfiles (Debian's Ignition always relabels; SELinux is off here)
check() { return 0; }

depends() {
    echo systemd ignition btrfs dm
}

# The build omits dracut's kernel-modules (every storage driver: a 40 MB initramfs
# that takes long to load under TCG) and installs the drivers a VM needs here instead.
installkernel() {
    hostonly='' instmods btrfs ext4 vfat nls_cp437 nls_iso8859_1 dm-mod dm-verity \
        virtio_blk virtio_pci virtio_scsi virtio_net virtio_console qemu_fw_cfg \
        sd_mod sr_mod ahci nvme hv_vmbus hv_storvsc hv_netvsc hv_utils hid_hyperv
}

install() {
    inst_multiple mount umount mkdir cp rm tr veritysetup
    inst_script "$moddir/acl-verity-generator" \
        "$systemdutildir/system-generators/acl-verity-generator"
    inst_script "$moddir/acl-oem-ignition.sh" /usr/libexec/acl-oem-ignition
    inst_script "$moddir/setfiles" /usr/sbin/setfiles
    inst_simple "$moddir/acl-oem-ignition.service" \
        "$systemdsystemunitdir/acl-oem-ignition.service"
    # Same wiring as Ignition's own units: only pulled in on an Ignition (first) boot.
    mkdir -p "$initdir/$systemdsystemunitdir/ignition-complete.target.requires"
    ln_r "$systemdsystemunitdir/acl-oem-ignition.service" \
        "$systemdsystemunitdir/ignition-complete.target.requires/acl-oem-ignition.service"
}
