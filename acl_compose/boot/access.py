"""How the harness reaches a guest: an ephemeral SSH key for user `core`, merged into the
Ignition user config passed by fw_cfg, and the ssh_config testinfra and `ssh -F` use."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError
from acl_compose.run import run


def generate_ssh_key(directory: Path) -> tuple[Path, str]:
    """An ephemeral ed25519 key pair for one run: (private key path, public key line)."""
    key = directory / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "acl-compose-vm", "-f", str(key)])
    return key, key.with_suffix(".pub").read_text().strip()


def load_user_config(path: Path | None) -> dict[str, Any]:
    """Read an Ignition config (.ign JSON, or YAML rendered by acl_compose.ignition)."""
    if path is None:
        return {"ignition": {"version": "3.3.0"}}
    if not path.is_file():
        raise InputError(
            f"{path}: Ignition config not found", hint="pass an existing .ign or .yaml"
        )
    if path.suffix in (".yaml", ".yml", ".bu"):
        from acl_compose import ignition  # the ignition helper's module; only needed for YAML

        return ignition.load(path)
    try:
        config = json.loads(path.read_text())
    except ValueError as e:
        raise InputError(f"{path}: not valid JSON: {e}", hint="pass an Ignition .ign file") from e
    if not isinstance(config, dict) or "ignition" not in config:
        raise InputError(f"{path}: no 'ignition' key", hint="pass an Ignition 3.x config")
    return config


def add_ssh_key(config: dict[str, Any], pubkey: str, user: str = "core") -> dict[str, Any]:
    """Return a copy of `config` whose `user` also accepts `pubkey` (creating the user entry)."""
    config = json.loads(json.dumps(config))
    users = config.setdefault("passwd", {}).setdefault("users", [])
    for entry in users:
        if entry.get("name") == user:
            keys = entry.setdefault("sshAuthorizedKeys", [])
            if pubkey not in keys:
                keys.append(pubkey)
            break
    else:
        users.append({"name": user, "sshAuthorizedKeys": [pubkey]})
    return config


# ssh's messages when the connection failed before authentication (the command never ran).
PREAUTH_FAILURES = (
    b"banner exchange",
    b"kex_exchange_identification",
    b"Connection refused",
    b"Connection reset",
    b"Connection timed out",
)


def ssh_config_text(port: int, key: Path, host: str = "vm", user: str = "core") -> str:
    """An ssh_config stanza for the VM (testinfra drops --ssh-extra-args, so all goes here)."""
    return (
        f"Host {host}\n"
        f"  HostName 127.0.0.1\n"
        f"  Port {port}\n"
        f"  User {user}\n"
        f"  IdentityFile {key}\n"
        f"  IdentitiesOnly yes\n"
        f"  StrictHostKeyChecking no\n"
        f"  UserKnownHostsFile /dev/null\n"
        f"  LogLevel ERROR\n"
        f"  BatchMode yes\n"
        f"  ConnectTimeout 30\n"
        f"  ServerAliveInterval 10\n"
        f"  ServerAliveCountMax 6\n"
    )
