"""The baked base Ignition config took effect exactly: files, directories, links, units, users,
and the sysctls and kernel modules its files set.

Expectations come from the config baked into the image (OEM `base/base.ign`, read offline on
the host and checked against release.json's sha256; conftest's `baked_ignition`), nothing is a
hard-coded list. Contents are decoded here, independently of acl-compose's renderer: data URLs
(percent-encoded or base64), gzip, appends; other sources are checked by their verification
hash. A config that declares nothing of a kind passes that kind's test. Each test asks the
guest once for everything it needs (an SSH round trip costs seconds under TCG).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import urllib.parse
from dataclasses import dataclass
from typing import Any

import pytest

UNIT_DIR = "/etc/systemd/system"

# Per path, tab-separated: path, uid gid mode type dev:inode, sha256 (regular files), link target.
INSPECT = r"""
for p in "$@"; do
    if [ -e "$p" ] || [ -L "$p" ]; then
        sum=""
        if [ -f "$p" ] && [ ! -L "$p" ]; then sum=$(sha256sum -- "$p" | cut -d' ' -f1); fi
        printf '%s\t%s\t%s\t%s\n' "$p" "$(stat -c '%u %g %a %d:%i %F' -- "$p")" "$sum" \
            "$(readlink -- "$p")"
    fi
done
"""


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


def sudo(host: Any, script: str, *args: str) -> Any:
    """Run a shell script as root with positional arguments."""
    return host.run("sudo -n sh -c %s sh " + " ".join(["%s"] * len(args)), script, *args)


@dataclass
class Node:
    uid: str
    gid: str
    mode: int
    ident: str  # device:inode
    type: str  # stat's %F: regular file, directory, symbolic link, ...
    sha256: str
    target: str  # readlink


def inspect(host: Any, paths: list[str]) -> dict[str, Node]:
    """What exists at these paths in the guest (absent paths are left out), in one call."""
    out = sudo(host, INSPECT, *sorted(set(paths))) if paths else None
    nodes = {}
    for line in out.stdout.splitlines() if out else []:
        path, st, sha, target = line.split("\t")
        uid, gid, mode, ident, kind = st.split(" ", 4)
        nodes[path] = Node(uid, gid, int(mode, 8), ident, kind, sha, target)
    return nodes


@pytest.fixture(scope="module")
def accounts(host: Any) -> dict[str, dict[str, list[str]]]:
    """The guest's passwd and group databases: name -> fields."""
    out: dict[str, dict[str, list[str]]] = {}
    for db in ("passwd", "group"):
        lines = host.check_output("getent %s", db).splitlines()
        out[db] = {ln.split(":")[0]: ln.split(":") for ln in lines if ln}
    return out


def owner_ids(entry: dict[str, Any], accounts: dict[str, Any]) -> tuple[str | None, str | None]:
    """The uid and gid an entry declares (names resolved in the guest); None if undeclared."""
    ids: list[str | None] = []
    for key, db in (("user", "passwd"), ("group", "group")):
        spec = entry.get(key) or {}
        if spec.get("id") is not None:
            ids.append(str(spec["id"]))
        elif spec.get("name"):
            fields = accounts[db].get(spec["name"])
            ids.append(fields[2] if fields else f"<no {key} {spec['name']}>")
        else:
            ids.append(None)
    return ids[0], ids[1]


def check_owner_mode(
    entry: dict[str, Any], node: Node, accounts: dict[str, Any], default_mode: int | None
) -> list[str]:
    problems = []
    uid, gid = owner_ids(entry, accounts)
    mode = entry.get("mode", default_mode)
    if uid is not None and node.uid != uid:
        problems.append(f"{entry['path']}: owner uid {node.uid}, declared {uid}")
    if gid is not None and node.gid != gid:
        problems.append(f"{entry['path']}: group gid {node.gid}, declared {gid}")
    if mode is not None and node.mode != mode:
        problems.append(f"{entry['path']}: mode {node.mode:o}, declared {mode:o}")
    return problems


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_files(host: Any, baked_ignition: dict[str, Any], accounts: dict[str, Any]) -> None:
    files = (baked_ignition.get("storage") or {}).get("files") or []
    nodes = inspect(host, [f["path"] for f in files])
    problems = []
    for f in files:
        node = nodes.get(f["path"])
        if node is None or node.type != "regular file":
            problems.append(f"{f['path']}: not a regular file ({node and node.type})")
            continue
        contents = f.get("contents") or {}
        if contents.get("source"):
            # Written from a source: Ignition's defaults (0644, root:root) apply.
            f = {"user": {"id": 0}, "group": {"id": 0}, "mode": 0o644, **f}
            f = {**f, "user": f["user"] or {"id": 0}, "group": f["group"] or {"id": 0}}
        problems += check_owner_mode(f, node, accounts, None)
        body = resource(contents) if contents.get("source") else b""
        appended = [resource(a) for a in f.get("append") or []]
        if body is not None and None not in appended:
            want = body + b"".join(a for a in appended if a is not None)
            if contents.get("source") or not appended:
                if node.sha256 != sha256(want):
                    problems.append(f"{f['path']}: content differs from the config")
            else:  # appended to whatever was there: the file must end with it
                tail = sudo(host, 'tail -c "$1" -- "$2" | sha256sum', str(len(want)), f["path"])
                if tail.stdout.split()[:1] != [sha256(want)]:
                    problems.append(f"{f['path']}: does not end with the appended content")
        verification = (contents.get("verification") or {}).get("hash")
        if body is None and verification:  # fetched by the guest: its hash must hold
            algo, _, digest = verification.partition("-")
            out = sudo(host, f'{algo}sum -- "$1"', f["path"]).stdout.split()[:1]
            if out != [digest]:
                problems.append(f"{f['path']}: {algo} {out} != verification hash {digest}")
    assert not problems, "\n".join(problems)


def test_directories(host: Any, baked_ignition: dict[str, Any], accounts: dict[str, Any]) -> None:
    dirs = (baked_ignition.get("storage") or {}).get("directories") or []
    nodes = inspect(host, [d["path"] for d in dirs])
    problems = []
    for d in dirs:
        node = nodes.get(d["path"])
        if node is None or node.type != "directory":
            problems.append(f"{d['path']}: not a directory ({node and node.type})")
            continue
        problems += check_owner_mode(d, node, accounts, None)
    assert not problems, "\n".join(problems)


def test_links(host: Any, baked_ignition: dict[str, Any], accounts: dict[str, Any]) -> None:
    """A symlink points at exactly its declared target; a hard link is the target's inode."""
    links = (baked_ignition.get("storage") or {}).get("links") or []
    nodes = inspect(host, [p for link in links for p in (link["path"], link["target"])])
    problems = []
    for link in links:
        path, target = link["path"], link["target"]
        node = nodes.get(path)
        if node is None:
            problems.append(f"{path}: missing")
        elif link.get("hard"):
            if target not in nodes or nodes[target].ident != node.ident:
                problems.append(f"{path}: not a hard link to {target}")
        elif node.type != "symbolic link" or node.target != target:
            problems.append(f"{path}: {node.type} -> {node.target!r}, declared -> {target!r}")
        else:
            problems += check_owner_mode({**link, "mode": None}, node, accounts, None)
    assert not problems, "\n".join(problems)


def test_units(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Contents and drop-ins as declared; masked -> /dev/null; enabled/disabled exactly."""
    units = (baked_ignition.get("systemd") or {}).get("units") or []
    paths = [f"{UNIT_DIR}/{u['name']}" for u in units]
    paths += [
        f"{UNIT_DIR}/{u['name']}.d/{d['name']}" for u in units for d in u.get("dropins") or []
    ]
    nodes = inspect(host, paths)
    switched = [u["name"] for u in units if u.get("enabled") is not None and not u.get("mask")]
    states = {}
    if switched:
        script = 'for u; do printf "%s %s\\n" "$u" "$(systemctl is-enabled "$u" 2>&1)"; done'
        for line in sudo(host, script, *switched).stdout.splitlines():
            name, _, state = line.partition(" ")
            states[name] = state
    problems = []
    for u in units:
        name = u["name"]
        node = nodes.get(f"{UNIT_DIR}/{name}")
        if u.get("mask") and (node is None or node.target != "/dev/null"):
            problems.append(f"{name}: masked in the config, but not linked to /dev/null")
        if u.get("contents") is not None:
            if node is None or node.sha256 != sha256(u["contents"].encode()):
                problems.append(f"{UNIT_DIR}/{name}: missing or differs from the config")
        for drop in u.get("dropins") or []:
            dnode = nodes.get(f"{UNIT_DIR}/{name}.d/{drop['name']}")
            want = sha256((drop.get("contents") or "").encode())
            if drop.get("contents") is not None and (dnode is None or dnode.sha256 != want):
                problems.append(f"{UNIT_DIR}/{name}.d/{drop['name']}: missing or differs")
        if name in switched:
            want_state = "enabled" if u["enabled"] else "disabled"
            if states.get(name) != want_state:
                problems.append(f"{name}: systemctl is-enabled says {states.get(name)!r}, "
                                f"not {want_state}")  # fmt: skip
    assert not problems, "\n".join(problems)


def test_users_and_groups(
    host: Any, baked_ignition: dict[str, Any], accounts: dict[str, Any]
) -> None:
    """Declared uid, primary group, groups, home, shell, password hash and SSH keys."""
    passwd = baked_ignition.get("passwd") or {}
    problems = []
    for g in passwd.get("groups") or []:
        fields = accounts["group"].get(g["name"])
        if not fields:
            problems.append(f"group {g['name']}: missing")
        elif g.get("gid") is not None and fields[2] != str(g["gid"]):
            problems.append(f"group {g['name']}: gid {fields[2]}, declared {g['gid']}")
    users = [u for u in passwd.get("users") or [] if u["name"] in accounts["passwd"]]
    problems += [f"user {u['name']}: missing" for u in passwd.get("users") or []
                 if u not in users]  # fmt: skip
    # One call for every user's groups, SSH keys and shadow entry.
    script = (
        'for u; do h=$(getent passwd "$u" | cut -d: -f6); echo "@@ $u"; id -nG "$u"; '
        'cat "$h/.ssh/authorized_keys.d/ignition" 2>/dev/null; echo "@@shadow $(getent shadow '
        '"$u" | cut -d: -f2)"; done'
    )
    facts: dict[str, list[str]] = {}
    for line in sudo(host, script, *(u["name"] for u in users)).stdout.splitlines():
        if line.startswith("@@ "):
            current = facts.setdefault(line[3:], [])
        else:
            current.append(line)
    gids = {fields[2]: name for name, fields in accounts["group"].items()}
    for u in users:
        name = u["name"]
        _, _, uid, gid, gecos, home, shell = accounts["passwd"][name][:7]
        want = {"uid": u.get("uid"), "home": u.get("homeDir"), "shell": u.get("shell")}
        got: dict[str, Any] = {"uid": int(uid), "home": home, "shell": shell}
        if "gecos" in u:
            want["gecos"], got["gecos"] = u["gecos"], gecos
        problems += [f"user {name}: {k} {got[k]}, declared {v}"
                     for k, v in want.items() if v is not None and got[k] != v]  # fmt: skip
        lines = facts.get(name, [""])
        groups = lines[0].split()
        missing = [g for g in u.get("groups") or [] if g not in groups]
        if missing:
            problems.append(f"user {name}: not in groups {missing} (in {groups})")
        if u.get("primaryGroup") and gids.get(gid) != u["primaryGroup"]:
            problems.append(f"user {name}: primary group {gids.get(gid)}, "
                            f"declared {u['primaryGroup']}")  # fmt: skip
        shadow = next((ln[9:] for ln in lines if ln.startswith("@@shadow ")), None)
        if u.get("passwordHash") is not None and shadow != u["passwordHash"]:
            problems.append(f"user {name}: password hash differs from the config")
        have = {ln.strip() for ln in lines[1:] if not ln.startswith("@@")}
        absent = [k for k in u.get("sshAuthorizedKeys") or [] if k.strip() not in have]
        if absent:
            problems.append(f"user {name}: {len(absent)} declared SSH key(s) not in "
                            f"{home}/.ssh/authorized_keys.d/ignition")  # fmt: skip
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
        out += [
            (f["path"], ln.strip())
            for ln in data.decode().splitlines()
            if ln.strip() and ln.strip()[0] not in "#;"
        ]
    return out


def test_sysctls_in_force(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Every sysctl a sysctl.d file of the config sets has that value in the kernel."""
    wanted = []
    for path, line in config_lines(baked_ignition, "/etc/sysctl.d/"):
        key, _, value = (p.strip() for p in line.lstrip("-").partition("="))
        proc = "/proc/sys/" + (key if "/" in key else key.replace(".", "/"))
        wanted.append((path, key, proc, value))
    if not wanted:
        return  # the config sets no sysctl
    script = 'for p; do [ -e "$p" ] && printf "%s\\t%s\\n" "$p" "$(cat "$p")"; done; true'
    out = host.run("sh -c %s sh " + " ".join(["%s"] * len(wanted)), script,
                   *(w[2] for w in wanted))  # fmt: skip
    kernel = dict(line.split("\t", 1) for line in out.stdout.splitlines() if "\t" in line)
    # A key this guest kernel does not have is left out, but at least one must exist.
    assert kernel, "none of the config's sysctl keys exists in the guest kernel"
    problems = [
        f"{key} = {kernel[proc].strip()!r}, but {path} sets {value!r}"
        for path, key, proc, value in wanted
        if proc in kernel and kernel[proc].split() != value.split()
    ]
    assert not problems, "\n".join(problems)


def test_modules_loaded(host: Any, baked_ignition: dict[str, Any]) -> None:
    """Every module a modules-load.d file of the config lists is loaded."""
    lines = config_lines(baked_ignition, "/etc/modules-load.d/")
    loaded = set(host.check_output("ls /sys/module").split())
    missing = [f"{m} ({path})" for path, m in lines if m.replace("-", "_") not in loaded]
    assert not missing, f"modules not loaded: {missing}"
