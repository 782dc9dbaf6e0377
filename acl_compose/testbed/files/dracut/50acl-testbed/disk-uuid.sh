#!/bin/bash
# Flatcar's disk-uuid (bootengine 30disk-uuid): images ship with the disk GUID
# 00000000-0000-0000-0000-000000000001; give that disk a random one on first boot so disks
# can be told apart. Nothing to do once it was randomized.
set -e
guid=00000000-0000-0000-0000-000000000001
for arg in $(</proc/cmdline); do
    case "$arg" in flatcar.randomize_disk_guid=*) guid="${arg#flatcar.randomize_disk_guid=}" ;; esac
done
if [ ! -e /dev/disk/by-diskuuid ]; then
    echo "/dev/disk/by-diskuuid does not exist. Bailing out"
    exit 1
fi
dev="/dev/disk/by-diskuuid/$guid"
if [ -e "$dev" ]; then
    sgdisk --disk-guid=R "$dev"
    udevadm settle || echo "udevadm settle failed"
fi
