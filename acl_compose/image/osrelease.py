"""os-release / extension-release files: parse, format, and the sysext match rules.

Format (os-release(5)): `KEY=value` lines, values optionally in single or double quotes,
shell-style backslash escapes inside double quotes, `#` comments. Used by sysext (the
extension-release it writes and the base it checks against), compose and testbed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from acl_compose.errors import InputError

_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Characters that force quoting when formatting a value.
_PLAIN = re.compile(r"^[A-Za-z0-9_.:/+@%,-]*$")

# Flatcar's os-release names its board, not ARCHITECTURE; map it to systemd's names.
FLATCAR_BOARDS = {"amd64-usr": "x86-64", "arm64-usr": "arm64"}


# systemd's env-file parser: lines end at \n or \r, whitespace is space and tab only (Python's
# splitlines/strip also split and strip \x0b, \x85, \u2028 ..., which systemd keeps in values).
_LINES = re.compile(r"[\r\n]")
_WS = " \t"


def _unquote(value: str) -> str:
    value = value.strip(_WS)
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        inner = value[1:-1]
        return re.sub(r'\\([$"\\`])', r"\1", inner)
    # Unquoted: a backslash escapes the next character, like the shell.
    return re.sub(r"\\(.)", r"\1", value)


def parse_os_release(text: str) -> dict[str, str]:
    """Parse os-release text into a dict; malformed lines are skipped (as systemd does)."""
    result: dict[str, str] = {}
    for raw in _LINES.split(text):
        line = raw.strip(_WS)
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        key = key.strip(_WS)
        if not _KEY.match(key):
            continue
        result[key] = _unquote(value)
    return result


def read_os_release(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read and parse an os-release file, with an InputError naming it if unreadable."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(
            f"cannot read os-release file {p}: {e.strerror if isinstance(e, OSError) else e}",
            hint="pass an os-release file such as /usr/lib/os-release of the base image",
        ) from e
    data = parse_os_release(text)
    if not data:
        raise InputError(
            f"{p} has no KEY=value lines; is it an os-release file?",
            hint="pass an os-release file such as /usr/lib/os-release of the base image",
        )
    return data


def format_os_release(data: dict[str, str]) -> str:
    """Format a dict as os-release text, quoting values only where needed."""
    lines = []
    for key, value in data.items():
        if not _KEY.match(key):
            raise InputError(f"invalid os-release key {key!r}")
        if _LINES.search(value):
            raise InputError(f"os-release value for {key} contains a line break")
        if _PLAIN.match(value) and value:
            lines.append(f"{key}={value}")
        else:
            escaped = re.sub(r'([$"\\`])', r"\\\1", value)
            lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def architecture(data: dict[str, str]) -> str | None:
    """The system architecture an os-release declares (ARCHITECTURE, else FLATCAR_BOARD)."""
    if data.get("ARCHITECTURE"):
        return data["ARCHITECTURE"]
    return FLATCAR_BOARDS.get(data.get("FLATCAR_BOARD", ""))


def extension_mismatch(ext: dict[str, str], base: dict[str, str]) -> str | None:
    """Why systemd-sysext would refuse `ext` (extension-release) on `base` (os-release), or None.

    The rules of systemd's extension_release_validate(): ID must match (or be `_any`);
    then SYSEXT_LEVEL if both sides set it, else VERSION_ID if the extension sets it;
    ARCHITECTURE if the extension sets it.
    """
    ext_id = ext.get("ID")
    if not ext_id:
        return "extension-release has no ID="
    ext_arch = ext.get("ARCHITECTURE")
    base_arch = architecture(base)
    if ext_arch and ext_arch != "_any" and base_arch and ext_arch != base_arch:
        return f"ARCHITECTURE={ext_arch} does not match the base's architecture {base_arch}"
    if ext_id == "_any":
        return None
    if ext_id != base.get("ID"):
        return f"ID={ext_id} does not match the base's ID={base.get('ID', '(unset)')}"
    base_level, base_version = base.get("SYSEXT_LEVEL"), base.get("VERSION_ID")
    if not base_level and not base_version:
        return None  # rolling-release base: systemd accepts any extension
    ext_level = ext.get("SYSEXT_LEVEL")
    if base_level and ext_level:
        if ext_level != base_level:
            return f"SYSEXT_LEVEL={ext_level} does not match the base's SYSEXT_LEVEL={base_level}"
        return None
    if base_version:
        ext_version = ext.get("VERSION_ID")
        if not ext_version:
            return (
                "extension-release has no VERSION_ID and no SYSEXT_LEVEL matching the base "
                f"(base VERSION_ID={base_version}, SYSEXT_LEVEL={base_level or '(unset)'})"
            )
        if ext_version != base_version:
            return f"VERSION_ID={ext_version} does not match the base's VERSION_ID={base_version}"
    return None
