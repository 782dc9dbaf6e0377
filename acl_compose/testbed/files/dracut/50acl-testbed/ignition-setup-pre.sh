#!/bin/bash
# Flatcar's platform choice (bootengine ignition-setup-pre.sh): flatcar.oem.id= from GRUB's
# OEM config, else qemu when virtualized by KVM/QEMU, else metal.
set -e
oem_id=metal
case "$(systemd-detect-virt || true)" in kvm | qemu) oem_id=qemu ;; esac
for arg in $(</proc/cmdline); do
    case "$arg" in flatcar.oem.id=*) oem_id="${arg#flatcar.oem.id=}" ;; esac
done
printf 'OEM_ID=%s\nPLATFORM_ID=%s\n' "$oem_id" "$oem_id" >/run/ignition.env
