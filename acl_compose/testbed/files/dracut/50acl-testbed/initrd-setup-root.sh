#!/bin/bash
# Flatcar's initrd-setup-root (bootengine 99setup-root), for the testbed:
# 1. a reset staged by `flatcar-reset` (ROOT:/selective-os-reset holds an egrep regex of the
#    paths to keep): delete everything else on ROOT, and machine-id, so this is a first boot;
# 2. the base layout from /usr's tmpfiles (merged-/usr links, /var, /home, ...): ROOT holds
#    only boot, usr, oem and lost+found when the image is built;
# 3. /etc: an overlay of /usr/share/flatcar/etc with ROOT:/etc as the writable upper layer.
set -euo pipefail
if mountpoint -q /sysroot/etc; then
    umount /sysroot/etc
fi
if [ -s /sysroot/selective-os-reset ]; then
    keep="$(cat /sysroot/selective-os-reset)"
    cd /sysroot
    # Deepest first; a directory that still holds kept files stays (rmdir fails).
    find . -xdev -depth -regextype egrep -not -regex "\.${keep}" -print0 |
        while IFS= read -r -d '' entry; do
            case "$entry" in . | ./usr) continue ;; esac
            if [ -d "$entry" ] && [ ! -L "$entry" ]; then
                rmdir "$entry" 2>/dev/null || true
            else
                rm -f "$entry" || true
            fi
        done
    cd /
    rm -f /sysroot/selective-os-reset /sysroot/etc/machine-id
    echo "initrd-setup-root: reset ROOT, kept: ${keep}"
fi
systemd-tmpfiles --root=/sysroot --create baselayout.conf base_image_var.conf
mkdir -p /sysroot/etc /sysroot/.etc-work
mount -t overlay overlay \
    -o lowerdir=/sysroot/usr/share/flatcar/etc,upperdir=/sysroot/etc,workdir=/sysroot/.etc-work,redirect_dir=on,metacopy=off,noatime \
    /sysroot/etc
