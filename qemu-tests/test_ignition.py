"""The baked base Ignition config took effect exactly: files, directories, links, units, users,
and the sysctls and kernel modules its files set.

Expectations come from the config baked into the image (OEM `base/base.ign`, read offline on
the host and checked against release.json's sha256; conftest's `baked_ignition`), nothing is a
hard-coded list. Contents are decoded here, independently of acl-compose's renderer: data URLs
(percent-encoded or base64), gzip, appends; other sources are checked by their verification
hash. A config that declares nothing of a kind passes that kind's test.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import shlex
import urllib.parse
from typing import Any

UNIT_DIR = "/etc/systemd/system"


def data_url(source: str) -> bytes | None:
    """Bytes of a `data:` URL; None for other schemes (the guest fetched those itself)."""
    if not source.startswith("data:"):
        return None
    meta, _, payload = source[5:].partition(",")
    if meta.split(";")[-1] == "base64":
        return base64.b64decode(urllib.parse.unquote(payload), validate=True)
    return urllib.parse.unquote_to_bytes(payload)


def resource(res: dict[str, Any]) -> bytes | None:
    """A resource's content as written to disk (decompressed), or None when unknown here."""
    source = res.get("source")
    data = data_url(source) if source else None
    if data is not None and res.get("compression") == "gzip":
        data = gzip.decompress(data)
    return data


def sudo(host: Any, command: str) -> Any:
    return host.run("sudo -n sh -c %s", command)


def stat(host: Any, path: str) -> dict[str, str] | None:
    """uid, gid, octal mode, type, device:inode of a path (not following links); None if absent."""
    out = sudo(host, f"stat -c '%u %g %a %F|%d:%i' -- {shlex.quote(path)}")
    if out.rc != 0:
        return None
    head, _, ident = out.stdout.strip().partition("|")
    uid, gid, mode, kind = head.split(" ", 3)
    return {"uid": uid, "gid": gid, "mode": mode, "type": kind, "id": ident}


def sha256_in_guest(host: Any, path: str) -> str:
    out = sudo(host, f"sha256sum -- {shlex.quote(path)}")
    return out.stdout.split()[0] if out.rc == 0 and out.stdout else f"unreadable: {out.stderr}"


def owner_ids(host: Any, entry: dict[str, Any]) -> tuple[str | None, str | None]:
    """The uid and gid an entry declares (names resolved in the guest); None if undeclared."""
    ids: list[str | None] = []
    for key, db in (("user", "passwd"), ("group", "group")):
        spec = entry.get(key) or {}
        if spec.get("id") is not None:
            ids.append(str(spec["id"]))
        elif spec.get("name"):
            line = host.run("getent %s %s", db, spec["name"]).stdout.strip()
            ids.append(line.split(":")[2] if line else f"<no {key} {spec['name']}>")
        else:
            ids.append(None)
    return ids[0], ids[1]


def check_owner_mode(
    host: Any, entry: dict[str, Any], st: dict[str, str], default_mode: int | None
) -> list[str]:
    problems = []
    uid, gid = owner_ids(host, entry)
    mode = entry.get("mode", default_mode)
    if uid is not None and st["uid"] != uid:
        problems.append(f"{entry['path']}: owner uid {st['uid']}, declared {uid}")
    if gid is not None and st["gid"] != gid:
        problems.append(f"{entry['path']}: group gid {st['gid']}, declared {gid}")
    if mode is not None and int(st["mode"], 8) != mode:
        problems.append(f"{entry['path']}: mode {st['mode']}, declared {mode:o}")
    return problems


def test_files(host: Any, baked_ignition: dict[str, Any]) -> None:
    problems = []
    for f in (baked_ignition.get("storage") or {}).get("files") or []:
        st = stat(host, f["path"])
        if st is None or st["type"] != "regular file":
            problems.append(f"{f['path']}: not a regular file ({st and st['type']})")
            continue
        contents = f.get("contents") or {}
        # Ignition's default mode and owner apply where it writes the file from a source.
        default = 0o644 if contents.get("source") else None
        if default and not (f.get("user") or {}):
            f = {**f, "user": {"id": 0}}
        if default and not (f.get("group") or {}):
            f = {**f, "group": {"id": 0}}
        problems += check_owner_mode(host, f, st, default)
        body = resource(contents) if contents.get("source") else b""
        appended = [resource(a) for a in f.get("append") or []]
        got = sha256_in_guest(host, f["path"])
        if body is not None and all(a is not None for a in appended):
            want = body + b"".join(a for a in appended if a is not None)
            if contents.get("source") or not appended:
                if got != hashlib.sha256(want).hexdigest():
                    problems.append(f"{f['path']}: content differs from the config")
            else:  # appended to whatever was there: the file must end with it
                tail = sudo(host, f"tail -c {len(want)} -- {shlex.quote(f['path'])} | sha256sum")
                if tail.stdout.split()[:1] != [hashlib.sha256(want).hexdigest()]:
                    problems.append(f"{f['path']}: does not end with the appended content")
        verification = (contents.get("verification") or {}).get("hash")
        if body is None and verification:  # fetched by the guest: its hash must hold
            algo, _, digest = verification.partition("-")
            out = sudo(host, f"{algo}sum -- {shlex.quote(f['path'])}").stdout.split()[:1]
            if out != [digest]:
                problems.append(f"{f['path']}: {algo} {out} != verification hash {digest}")
    assert not problems, "\n".join(problems)


def test_directories(host: Any, baked_ignition: dict[str, Any]) -> None:
    problems = []
    for d in (baked_ignition.get("storage") or {}).get("directories") or []:
        st = stat(host, d["path"])
        if st is None or st["type"] != "directory":
            problems.append(f"{d['path']}: not a directory ({st and st['type']})")
            continue
        problems += check_owner_mode(host, d, st, None)
    assert not problems, "\n".join(problems)


def test_links(host: Any, baked_ignition: dict[str, Any]) -> None:
    """A symlink points at exactly its declared target; a hard link is the target's inode."""
    problems = []
    for link in (baked_ignition.get("storage") or {}).get("links") or []:
        path, target = link["path"], link["target"]
        st = stat(host, path)
        if st is None:
            problems.append(f"{path}: missing")
            continue
        if link.get("hard"):
            tst = stat(host, target)
            if tst is None or tst["id"] != st["id"]:
                problems.append(f"{path}: not a hard link to {target}")
            continue
        got = sudo(host, f"readlink -- {shlex.quote(path)}").stdout.strip()
        if st["type"] != "symbolic link" or got != target:
            problems.append(f"{path}: {st['type']} -> {got!r}, declared a symlink to {target!r}")
        problems += check_owner_mode(host, {**link, "mode": None}, st, None)
    assert not problems, "\n".join(problems)


def test_units(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Contents and drop-ins as declared; masked -> /dev/null; enabled/disabled exactly."""
    problems = []
    for u in (baked_ignition.get("systemd") or {}).get("units") or []:
        name = u["name"]
        path = f"{UNIT_DIR}/{name}"
        if u.get("mask"):
            got = sudo(host, f"readlink -- {shlex.quote(path)}").stdout.strip()
            if got != "/dev/null":
                problems.append(f"{name}: masked in the config, {path} -> {got!r}")
        if u.get("contents") is not None:
            if sha256_in_guest(host, path) != hashlib.sha256(u["contents"].encode()).hexdigest():
                problems.append(f"{path}: content differs from the config")
        for drop in u.get("dropins") or []:
            dpath = f"{UNIT_DIR}/{name}.d/{drop['name']}"
            want = hashlib.sha256((drop.get("contents") or "").encode()).hexdigest()
            if drop.get("contents") is not None and sha256_in_guest(host, dpath) != want:
                problems.append(f"{dpath}: missing or differs from the config")
        if u.get("enabled") is not None and not u.get("mask"):
            state = host.run("systemctl is-enabled %s", name).stdout.strip()
            want_state = "enabled" if u["enabled"] else "disabled"
            if state != want_state:
                problems.append(f"{name}: systemctl is-enabled says {state!r}, not {want_state}")
    assert not problems, "\n".join(problems)


def test_users_and_groups(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Declared uid, primary group, groups, home, shell, password hash and SSH keys."""
    passwd = baked_ignition.get("passwd") or {}
    problems = []
    for g in passwd.get("groups") or []:
        line = host.run("getent group %s", g["name"]).stdout.strip()
        if not line:
            problems.append(f"group {g['name']}: missing")
        elif g.get("gid") is not None and line.split(":")[2] != str(g["gid"]):
            problems.append(f"group {g['name']}: gid {line.split(':')[2]}, declared {g['gid']}")
    for u in passwd.get("users") or []:
        name = u["name"]
        line = host.run("getent passwd %s", name).stdout.strip()
        if not line:
            problems.append(f"user {name}: missing")
            continue
        _, _, uid, gid, gecos, home, shell = line.split(":", 6)
        want = {"uid": u.get("uid"), "home": u.get("homeDir"), "shell": u.get("shell")}
        got = {"uid": int(uid), "home": home, "shell": shell}
        if "gecos" in u:
            want["gecos"], got["gecos"] = u["gecos"], gecos
        problems += [
            f"user {name}: {k} {got[k]}, declared {v}"
            for k, v in want.items()
            if v is not None and got[k] != v
        ]
        groups = host.run("id -nG %s", name).stdout.split()
        missing = [g for g in u.get("groups") or [] if g not in groups]
        if missing:
            problems.append(f"user {name}: not in groups {missing} (in {groups})")
        if u.get("primaryGroup"):
            primary = host.run("getent group %s", gid).stdout.split(":")[0]
            if primary != u["primaryGroup"]:
                problems.append(
                    f"user {name}: primary group {primary}, declared {u['primaryGroup']}"
                )
        if u.get("passwordHash") is not None:
            shadow = sudo(host, f"getent shadow {shlex.quote(name)}").stdout.split(":")
            if len(shadow) < 2 or shadow[1] != u["passwordHash"]:
                problems.append(f"user {name}: password hash differs from the config")
        keys = u.get("sshAuthorizedKeys") or []
        if keys:
            path = f"{home}/.ssh/authorized_keys.d/ignition"
            have = sudo(host, f"cat -- {shlex.quote(path)}").stdout.splitlines()
            absent = [k for k in keys if k.strip() not in (h.strip() for h in have)]
            if absent:
                problems.append(f"user {name}: {len(absent)} declared SSH key(s) not in {path}")
    assert not problems, "\n".join(problems)


# -- effects on the running kernel ----------------------------------------------------------


def config_lines(baked_ignition: dict[str, Any], prefix: str) -> list[tuple[str, str]]:
    """(path, line) for the meaningful lines of the config's data-URL files under prefix."""
    out = []
    for f in baked_ignition.get("storage", {}).get("files", []):
        if not (f["path"].startswith(prefix) and f["path"].endswith(".conf")):
            continue
        data = resource(f.get("contents") or {})
        if data is None:
            continue  # not a data URL: content unknown here
        text = data.decode()
        out += [
            (f["path"], ln.strip())
            for ln in text.splitlines()
            if ln.strip() and ln.strip()[0] not in "#;"
        ]
    return out


def test_sysctls_in_force(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Every sysctl a sysctl.d file of the config sets has that value in the kernel."""
    lines = config_lines(baked_ignition, "/etc/sysctl.d/")
    if not lines:
        return  # the config sets no sysctl
    problems, checked = [], 0
    for path, line in lines:
        key, _, want = (p.strip() for p in line.lstrip("-").partition("="))
        # /proc/sys directly: sysctl(8) may be missing or off core's PATH
        proc = host.file("/proc/sys/" + (key if "/" in key else key.replace(".", "/")))
        if not proc.exists:
            continue  # a key this guest kernel does not have
        checked += 1
        got = proc.content_string
        if got.split() != want.split():
            problems.append(f"{key} = {got.strip()!r}, but {path} sets {want!r}")
    assert checked, "none of the config's sysctl keys exists in the guest kernel"
    assert not problems, "\n".join(problems)


def test_modules_loaded(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Every module a modules-load.d file of the config lists is loaded."""
    lines = config_lines(baked_ignition, "/etc/modules-load.d/")
    missing = [
        f"{module} ({path})"
        for path, module in lines
        if not host.file(f"/sys/module/{module.replace('-', '_')}").exists
    ]
    assert not missing, f"modules not loaded: {missing}"
