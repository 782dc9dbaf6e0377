#!/bin/bash
# acl-compose testbed: what Flatcar's initrd (bootengine) does, on Debian's dracut and Ignition.
# - /usr from verity.usr= / verity.usrhash= at the fixed hash offset (verity-generator)
# - Ignition on flatcar.first_boot, platform from flatcar.oem.id (replaces Debian's generator)
# - OEM base/base.ign and config.ign handed to Ignition (ignition-setup)
# - flatcar/first_boot removed from the ESP after Ignition (ignition-quench)
# - disk GUID randomized on first boot (disk-uuid)
# - ROOT reset, base layout and the /etc overlay (initrd-setup-root), OEM sysext link
#   (initrd-setup-root-after-ignition)
# - the initrd network for Ignition's fetch stage (50flatcar-network)
# - a no-op setfiles (Debian's Ignition always relabels; SELinux is off here)
check() { return 0; }

depends() {
    echo systemd systemd-networkd ignition btrfs dm
}

# The build omits dracut's kernel-modules (every storage driver: a 40 MB initramfs
# that takes long to load under TCG) and installs the drivers a VM needs here instead.
# udf: Azure's provisioning DVD, which Ignition's azure provider mounts for the custom data.
installkernel() {
    hostonly='' instmods btrfs ext4 vfat nls_cp437 nls_iso8859_1 nls_ascii dm-mod dm-verity overlay \
        virtio_blk virtio_pci virtio_scsi virtio_net virtio_console qemu_fw_cfg \
        sd_mod sr_mod udf ahci nvme hv_vmbus hv_storvsc hv_netvsc hv_utils hid_hyperv
}

install() {
    inst_multiple mount umount mountpoint mkdir cp rm rmdir ln tr cut grep find sort cat \
        veritysetup dmsetup sgdisk udevadm systemd-tmpfiles systemd-escape systemd-detect-virt
    # Flatcar's wiring replaces Debian's ignition.firstboot= generator.
    rm -f "$initdir$systemdutildir/system-generators/ignition-generator"
    inst_script "$moddir/ignition-generator" "$systemdutildir/system-generators/ignition-generator"
    inst_script "$moddir/verity-generator" "$systemdutildir/system-generators/verity-generator"
    inst_script "$moddir/ignition-setup-pre.sh" /usr/sbin/ignition-setup-pre
    inst_script "$moddir/ignition-setup.sh" /usr/sbin/ignition-setup
    inst_script "$moddir/disk-uuid.sh" /usr/sbin/disk-uuid
    inst_script "$moddir/initrd-setup-root.sh" /usr/sbin/initrd-setup-root
    inst_script "$moddir/initrd-setup-root-after-ignition.sh" \
        /usr/sbin/initrd-setup-root-after-ignition
    inst_script "$moddir/setfiles" /usr/sbin/setfiles
    inst_rules "$moddir/90-disk-uuid.rules"
    inst_simple "$moddir/00-forward-to-console.conf" \
        /etc/systemd/journald.conf.d/00-forward-to-console.conf
    local unit
    for unit in ignition-setup-pre.service ignition-setup.service ignition-quench.service \
        sysroot-boot.service sysroot-oem.mount disk-uuid.service initrd-setup-root.service \
        initrd-setup-root-after-ignition.service; do
        inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
    done
    for unit in ignition-mount.service ignition-files.service; do
        inst_simple "$moddir/10-flatcar.conf" "$systemdsystemunitdir/$unit.d/10-flatcar.conf"
    done
    # Flatcar's initrd network (bootengine 50flatcar-network): DHCP everywhere, networkd
    # started only by Ignition's fetch stage (dracut's systemd-networkd module enables it).
    inst_simple "$moddir/zz-default.network" "$systemdnetwork/zz-default.network"
    inst_simple "$moddir/10-networkd.conf" \
        "$systemdsystemunitdir/ignition-fetch.service.d/10-networkd.conf"
    "${SYSTEMCTL:-systemctl}" -q --root "$initdir" disable systemd-networkd.service \
        systemd-networkd.socket
    # Like Ignition's own units: the setup services only on an Ignition (first) boot; the
    # root setup on every boot.
    mkdir -p "$initdir/$systemdsystemunitdir/ignition-complete.target.requires" \
        "$initdir/$systemdsystemunitdir/initrd.target.wants"
    for unit in ignition-setup-pre.service ignition-setup.service; do
        ln_r "$systemdsystemunitdir/$unit" \
            "$systemdsystemunitdir/ignition-complete.target.requires/$unit"
    done
    for unit in initrd-setup-root.service initrd-setup-root-after-ignition.service; do
        ln_r "$systemdsystemunitdir/$unit" "$systemdsystemunitdir/initrd.target.wants/$unit"
    done
}
