"""Every sysext in release.json is merged, its files visible, its verity signature accepted.

A release that lists no sysexts has nothing to check here: the tests pass (they do not skip).
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def sysexts(release: dict[str, Any]) -> list[dict[str, Any]]:
    return list(release.get("sysexts") or [])


def merged_extensions(host: Any) -> set[str]:
    """Names `systemd-sysext status` reports as merged into /usr (or /opt)."""
    out = host.run("systemd-sysext status --json=short")
    names: set[str] = set()
    if out.rc == 0 and out.stdout.strip().startswith("["):
        for entry in json.loads(out.stdout):
            ext = entry.get("extensions")
            if isinstance(ext, list):
                names.update(ext)
            elif isinstance(ext, str) and ext != "none":
                names.add(ext)
        return names
    # Older systemd: "HIERARCHY EXTENSIONS SINCE" table.
    for line in host.check_output("systemd-sysext status --no-legend").splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[1] != "none":
            names.update(parts[1].split(","))
    return names


def test_sysexts_merged(host: Any, required_release: dict[str, Any]) -> None:
    merged = merged_extensions(host)
    missing = [s["name"] for s in sysexts(required_release) if s["name"] not in merged]
    assert not missing, f"not merged: {missing} (merged: {sorted(merged)})"


def test_sysext_images_placed_and_intact(host: Any, required_release: dict[str, Any]) -> None:
    for s in sysexts(required_release):
        link = host.file(f"/etc/extensions/{s['name']}.raw")
        assert link.is_symlink, f"/etc/extensions/{s['name']}.raw is not a link"
        path = s.get("path") or link.linked_to
        assert link.linked_to == path, f"{link.path} -> {link.linked_to}, expected {path}"
        digest = host.check_output(f"sha256sum {path}").split()[0]
        assert digest == s["sha256"], f"{path}: sha256 {digest} != release.json {s['sha256']}"


def test_sysext_files_visible(host: Any, required_release: dict[str, Any]) -> None:
    for s in sysexts(required_release):
        rel = host.file(f"/usr/lib/extension-release.d/extension-release.{s['name']}")
        assert rel.exists, f"{rel.path} is not visible: {s['name']} is not merged"
        fields = dict(line.split("=", 1) for line in rel.content_string.splitlines() if "=" in line)
        assert fields.get("ID", "").strip('"') in ("flatcar", "_any"), fields


# Per dm-verity device, tab-separated: name, table ("start length verity ..."), open count,
# status (V valid, C corrupted), the files behind its data and hash devices (loop devices) by
# identity: "inode major:minor path". The path alone misleads: an image opened in
# systemd-sysext's private mount namespace shows a path relative to its filesystem once that
# namespace is gone (/extensions/x.raw for OEM:/extensions/x.raw), so inode and device decide.
VERITY_DEVICES = r"""
backing() {
    d=$(readlink -f "/sys/dev/block/$1")
    [ -e "$d/loop/backing_file" ] || d=${d%/*}
    [ -e "$d/loop/backing_file" ] || return 0
    echo "$(losetup -n -O BACK-INO,BACK-MAJ:MIN "/dev/${d##*/}" | xargs)" \
        "$(cat "$d/loop/backing_file")"
}
dmsetup table --target verity | while IFS= read -r line; do
    case "$line" in *": "*) ;; *) continue ;; esac
    name=${line%%: *} table=${line#*: }
    set -- $table
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$table" \
        "$(dmsetup info -c --noheadings -o open "$name" | tr -d ' ')" \
        "$(dmsetup status "$name" | awk '{print $NF}')" "$(backing "$5")" "$(backing "$6")"
done
"""


def test_sysext_verity_activated(
    host: Any, root_run: Any, required_release: dict[str, Any]
) -> None:
    """Each image is open through a dm-verity device with release.json's root hash.

    The device's table names the root hash; its data and hash devices are partitions of the
    loop device of the image file release.json lists; the device is open (its filesystem is a
    layer of the /usr overlay) and valid. systemd activates a signed image only when the kernel
    keyring or /etc/verity.d accepts its signature, so an active device proves the signature.
    """
    items = sysexts(required_release)
    if not items:
        return
    out = root_run(VERITY_DEVICES)
    assert out.rc == 0, out.stderr
    devices = {}
    for line in out.stdout.splitlines():
        name, table, opened, status, data, hashdev = line.split("\t")
        devices[table.split()[11]] = (name, opened, status, data, hashdev)  # by root hash
    # One line per image: "inode major:minor path" (stat follows the /etc/extensions link).
    paths = " ".join(shlex.quote(s["path"]) for s in items)
    images = host.check_output(f"stat -L -c '%i %Hd:%Ld %n' {paths}")
    problems = []
    for s, image in zip(items, images.splitlines(), strict=True):
        found = devices.get(s.get("root_hash") or "")
        if found is None:
            problems.append(f"{s['name']}: no dm-verity device has root hash {s.get('root_hash')}")
            continue
        name, opened, status, data, hashdev = found
        want, got = image.split()[:2], [d.split()[:2] for d in (data, hashdev)]
        if got != [want, want]:
            problems.append(f"{s['name']}: {name} reads {data!r} and {hashdev!r}, not {image!r}")
        if not opened.isdigit() or int(opened) < 1:
            problems.append(f"{s['name']}: {name} is not open (not a merged layer)")
        if status != "V":
            problems.append(f"{s['name']}: {name} status {status!r} is not valid (V)")
    assert not problems, "\n".join(problems)


def test_sysext_signing_certificate_installed(host: Any, required_release: dict[str, Any]) -> None:
    signed = [s for s in sysexts(required_release) if s.get("certificate_fingerprint")]
    if not signed:
        return  # nothing signed, so no certificate is needed
    verity_d = (required_release.get("signing") or {}).get("verity_d")
    paths = [verity_d] if verity_d else host.check_output("ls /etc/verity.d/*.crt").split()
    fingerprints = set()
    for p in paths:
        pem = host.file(p).content_string
        der = x509.load_pem_x509_certificate(pem.encode()).public_bytes(Encoding.DER)
        fingerprints.add(hashlib.sha256(der).hexdigest())
    for s in signed:
        assert s["certificate_fingerprint"] in fingerprints, (
            f"{s['name']} is signed by {s['certificate_fingerprint']}, "
            f"but /etc/verity.d holds {sorted(fingerprints)}"
        )
