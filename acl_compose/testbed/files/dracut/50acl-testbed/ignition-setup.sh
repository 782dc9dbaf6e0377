#!/bin/sh
# Flatcar's ignition-setup (bootengine): the OEM partition's config.ign replaces the platform
# config (user.ign); its base/base.ign is merged under every config (base.d).
set -eu
src=/mnt/oem
mkdir -p "$src" /usr/lib/ignition/base.d
mount -o ro /dev/disk/by-label/OEM "$src"
trap 'umount "$src"' EXIT
if [ -e "$src/base/base.ign" ]; then
    cp "$src/base/base.ign" /usr/lib/ignition/base.d/
fi
if [ -e "$src/config.ign" ]; then
    cp "$src/config.ign" /usr/lib/ignition/user.ign
fi
