#!/bin/sh
# Flatcar semantics: OEM config.ign replaces the platform config (user.ign),
# OEM base/base.ign is merged under every config (base.d).
set -eu
dev=/dev/disk/by-label/OEM
mnt=/run/acl-oem
if [ ! -e "$dev" ]; then
    echo "acl-oem-ignition: no OEM partition, nothing to copy"
    exit 0
fi
mkdir -p "$mnt" /usr/lib/ignition/base.d
mount -o ro "$dev" "$mnt"
trap 'umount "$mnt"' EXIT
if [ -f "$mnt/base/base.ign" ]; then
    cp "$mnt/base/base.ign" /usr/lib/ignition/base.d/base.ign
    echo "acl-oem-ignition: copied OEM base/base.ign to /usr/lib/ignition/base.d/"
fi
if [ -f "$mnt/config.ign" ]; then
    cp "$mnt/config.ign" /usr/lib/ignition/user.ign
    echo "acl-oem-ignition: copied OEM config.ign to /usr/lib/ignition/user.ign"
fi
