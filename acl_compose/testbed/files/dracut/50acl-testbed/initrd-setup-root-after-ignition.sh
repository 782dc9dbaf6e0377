#!/bin/bash
# Flatcar's initrd-setup-root-after-ignition (bootengine 99setup-root), for the testbed, on
# every boot: link /etc/extensions/oem-<id>.raw to the active OEM sysext on the OEM partition
# (OEM:/sysext/oem-<id>-<VERSION>.raw, flagged by OEM:/sysext/active-oem-<id>), and
# /etc/extensions/flatcar-<name>.raw for each name in enabled-sysext.conf whose image is in
# /etc/flatcar/sysext. Flatcar downloads a missing image; the testbed is offline and drops the
# link instead. So Flatcar's initrd owns every oem-* and flatcar-* name in /etc/extensions.
set -euo pipefail
VERSION=$(. /sysroot/usr/lib/os-release && echo "$VERSION")
OEMID=$({ grep -m 1 -o "^ID=.*" /sysroot/oem/oem-release || true; } | cut -d = -f 2 | tr -d "\"'")
if [ -n "$OEMID" ] && [ -e "/sysroot/oem/sysext/active-oem-$OEMID" ]; then
    active="/oem/sysext/oem-$OEMID-$VERSION.raw"
    link="/sysroot/etc/extensions/oem-$OEMID.raw"
    if [ -e "/sysroot$active" ]; then
        mkdir -p /sysroot/etc/extensions
        ln -fs "$active" "$link"
    else
        echo "initrd-setup-root-after-ignition: $active not found" >&2
        rm -f "$link"
    fi
fi
conf=""
for f in /sysroot/etc/flatcar/enabled-sysext.conf /sysroot/usr/share/flatcar/enabled-sysext.conf; do
    [ -e "$f" ] && conf="$conf $f"
done
if [ -n "$conf" ]; then
    # shellcheck disable=SC2086
    for name in $(grep -h -o '^[^#-][^# ]*' $conf | sort -u); do
        if grep -q -x -e "-$name" /sysroot/etc/flatcar/enabled-sysext.conf 2>/dev/null; then
            continue
        fi
        image="/etc/flatcar/sysext/flatcar-$name-$VERSION.raw"
        if [ -e "/sysroot$image" ]; then
            mkdir -p /sysroot/etc/extensions
            ln -fs "$image" "/sysroot/etc/extensions/flatcar-$name.raw"
        else
            rm -f "/sysroot/etc/extensions/flatcar-$name.raw"
        fi
    done
fi
