"""The compose manifest: one YAML file describing a release (schema in README.md).

Every error names `file:line`. Unknown keys are refused (a typo must not silently drop a
setting), relative paths resolve against the manifest's folder, and `${VAR}` /
`${VAR:-default}` in string values expand from the environment (so `make demo` can point
`base.base_url` at a loopback server without editing the file).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from acl_compose import yamlpos
from acl_compose.errors import InputError
from acl_compose.image.outputs import DEFAULT_PLATFORM
from acl_compose.ui import opt

OUTPUT_FORMATS = ("raw", "qcow2", "vhd")
# Platforms an output can be made for (Flatcar's OEM ids; each format's default platform is in
# image.outputs): Flatcar builds one image per platform from the generic one; only the OEM
# partition differs.
PLATFORMS = ("azure", "qemu")
CHANNELS = ("alpha", "beta", "stable", "lts")
BOARDS = ("amd64-usr", "arm64-usr")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class Base:
    path: Path | None = None
    channel: str = "stable"
    release: str = "current"
    board: str = "amd64-usr"
    base_url: str | None = None
    keyring: Path | None = None
    trusted_key: str | None = None
    offline: bool = False


@dataclass
class Signing:
    key: Path
    cert: Path
    passphrase_file: Path | None = None


@dataclass(frozen=True)
class Output:
    """One output image: a format (raw, qcow2, vhd) made for a platform (azure, qemu)."""

    format: str
    platform: str

    def __str__(self) -> str:
        return f"{self.format}:{self.platform}"


@dataclass
class Manifest:
    path: Path
    name: str
    version: str
    base: Base
    signing: Signing
    sysexts: list[Path] = field(default_factory=list)
    ignition: list[Path] = field(default_factory=list)
    outputs: list[Output] = field(default_factory=lambda: [Output("raw", "qemu")])
    source_date_epoch: int | None = None
    debian_mirror: str | None = None  # for the sysexts' deb sources (--debian-mirror)

    @property
    def stem(self) -> str:
        """File name stem of the outputs: `<name>-<version>`."""
        return f"{self.name}-{self.version}"

    @property
    def platforms(self) -> list[str]:
        """The platforms of the outputs, in the order they first appear."""
        return list(dict.fromkeys(o.platform for o in self.outputs))


class _Ctx:
    """Error helper bound to the manifest file and its YAML positions."""

    def __init__(self, path: Path, loc: yamlpos.Located) -> None:
        self.path = path
        self.loc = loc

    def line(self, *ypath: str | int, default: int = 0) -> int:
        return self.loc.line(ypath, default)

    def err(self, line: int, where: str, msg: str, hint: str | None = None) -> InputError:
        return InputError(
            f"{self.path}:{line}: {where}: {msg}",
            hint=hint or "see the manifest schema in README.md (## Command tour, compose)",
        )

    def mapping(self, node: Any, where: str, line: int, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(node, dict):
            raise self.err(line, where, f"expected a mapping, got {_kind(node)}")
        for key in node:
            if key not in allowed:
                raise self.err(
                    self.line(*_ypath(where), key),
                    _join(where, key),
                    "unknown key",
                    hint=f"allowed keys here: {', '.join(sorted(allowed))}",
                )
        return node

    def string(
        self, node: dict[str, Any], key: str, where: str, required: bool = False,
        text_only: bool = False,
    ) -> str | None:  # fmt: skip
        """A string field; `text_only` (names, versions): a YAML number is refused with its
        `file:line:col` and the advice to quote it (an unquoted 0.10 is the float 0.1)."""
        if key not in node or node[key] is None:
            if required:
                line = self.loc.start(_ypath(where))[0]
                raise self.err(line, _join(where, key), "required key missing")
            return None
        line = self.line(*_ypath(where), key)
        value = node[key]
        if text_only:
            ypath = (*_ypath(where), key)
            try:
                yamlpos.text(value, self.loc.raw(ypath), key)
            except yamlpos.ScalarError as e:
                vline, col = self.loc.start(ypath)
                raise InputError(
                    f"{self.path}:{vline}:{col}: {_join(where, key)}: {e}",
                    hint="names and versions are text in the manifest: quote them",
                ) from None
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise self.err(line, _join(where, key), f"expected a string, got {_kind(value)}")
        return self.expand(str(value), line, _join(where, key))

    def expand(self, value: str, line: int, where: str) -> str:
        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ and os.environ[var] != "":
                return os.environ[var]
            if default is not None:
                return default
            raise self.err(
                line,
                where,
                f"environment variable {var} is not set",
                hint=f"export {var}=... or use ${{{var}:-default}}",
            )

        return _ENV_RE.sub(sub, value)

    def path_value(self, value: str, line: int, where: str, must_exist: bool = True) -> Path:
        p = Path(os.path.expanduser(value))
        if not p.is_absolute():
            p = self.path.parent / p
        p = Path(os.path.normpath(p))
        if must_exist and not p.exists():
            raise self.err(
                line,
                where,
                f"{value!r} does not exist (resolved to {p})",
                hint="paths are relative to the manifest's folder",
            )
        return p


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _ypath(where: str) -> tuple[str, ...]:
    return (where,) if where else ()  # mappings are at most one level deep


def _kind(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, list):
        return "a list"
    return type(v).__name__


def load_manifest(
    path: str | os.PathLike[str], overrides: dict[str, Any] | None = None
) -> Manifest:
    """Parse and validate a manifest; `overrides` (from the command line) replace base.* fields.

    Accepted override keys: base_url, trusted_key, keyring, offline, path.
    """
    path = Path(path).resolve()
    try:
        loc = yamlpos.load(yamlpos.read(path))
    except OSError as e:
        raise InputError(
            f"{path}: cannot read manifest: {e.strerror}", hint="check the path"
        ) from e
    except yaml.YAMLError as e:
        hint = getattr(e, "hint", "fix the YAML syntax")
        raise InputError(yamlpos.describe(e, path), hint=hint) from e
    ctx = _Ctx(path, loc)
    doc = loc.data
    if doc is None:
        raise ctx.err(1, "manifest", "file is empty")
    top = ctx.mapping(
        doc,
        "",
        1,
        {
            "name",
            "version",
            "base",
            "sysexts",
            "ignition",
            "signing",
            "outputs",
            "source_date_epoch",
        },
    )

    name = ctx.string(top, "name", "", required=True, text_only=True) or ""
    version = ctx.string(top, "version", "", required=True, text_only=True) or ""
    for key, value in (("name", name), ("version", version)):
        if not _NAME_RE.match(value):
            raise ctx.err(
                ctx.line(key),
                key,
                f"{value!r} is not a valid name (letters, digits, '.', '_', '-')",
            )

    if "base" not in top or top["base"] is None:
        raise ctx.err(1, "base", "required key missing")
    base = _load_base(ctx, top["base"], ctx.line("base"), overrides or {})

    if "signing" not in top or top["signing"] is None:
        raise ctx.err(
            1,
            "signing",
            "required key missing",
            hint="add signing: {key: ..., cert: ...} (make them with `acl-compose keys generate`)",
        )
    sg = ctx.mapping(
        top["signing"], "signing", ctx.line("signing"), {"key", "cert", "passphrase_file"}
    )
    key = ctx.string(sg, "key", "signing", required=True) or ""
    cert = ctx.string(sg, "cert", "signing", required=True) or ""
    pf = ctx.string(sg, "passphrase_file", "signing")
    signing = Signing(
        key=ctx.path_value(key, ctx.line("signing", "key"), "signing.key"),
        cert=ctx.path_value(cert, ctx.line("signing", "cert"), "signing.cert"),
        passphrase_file=ctx.path_value(
            pf, ctx.line("signing", "passphrase_file"), "signing.passphrase_file"
        )
        if pf
        else None,
    )

    sysexts = _path_list(ctx, top, "sysexts")
    for i, p in enumerate(sysexts):
        if p.is_dir() and not (p / "sysext.yaml").is_file():
            raise ctx.err(
                ctx.line("sysexts", i),
                f"sysexts[{i}]",
                f"{p} is a directory without sysext.yaml",
                hint="give a bundle directory or a prebuilt .raw image",
            )
        if p.is_file() and p.suffix != ".raw":
            raise ctx.err(ctx.line("sysexts", i), f"sysexts[{i}]", f"{p} is not a .raw image")
    ignition = _path_list(ctx, top, "ignition")
    for i, p in enumerate(ignition):
        if not p.is_file():
            raise ctx.err(ctx.line("ignition", i), f"ignition[{i}]", f"{p} is not a file")

    outputs = _outputs(ctx, top["outputs"]) if "outputs" in top else [Output("raw", "qemu")]

    sde = None
    if top.get("source_date_epoch") is not None:
        v = top["source_date_epoch"]
        if isinstance(v, str):
            v = ctx.expand(v, ctx.line("source_date_epoch"), "source_date_epoch")
        try:
            sde = int(v)
            if sde < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise ctx.err(
                ctx.line("source_date_epoch"),
                "source_date_epoch",
                f"{v!r} is not a non-negative integer",
            ) from None

    return Manifest(
        path=path,
        name=name,
        version=version,
        base=base,
        signing=signing,
        sysexts=sysexts,
        ignition=ignition,
        outputs=outputs,
        source_date_epoch=sde,
    )


def _load_base(ctx: _Ctx, node: Any, line: int, overrides: dict[str, Any]) -> Base:
    allowed = {
        "path",
        "channel",
        "release",
        "board",
        "base_url",
        "keyring",
        "trusted_key",
        "offline",
    }
    b = ctx.mapping(node, "base", line, allowed)
    base = Base()
    if overrides.get("path"):
        # --base-path replaces the whole remote base: its fields (and their ${VARS}) are not
        # read, only base.board (which /usr layout to expect). The path is the user's, relative
        # to where they typed it, not to the manifest.
        base.path = Path(overrides["path"]).resolve()
        if not base.path.exists():
            raise InputError(
                f"{opt('--base-path', 'base path')} {overrides['path']} does not exist "
                f"(resolved to {base.path})",
                hint="give a Flatcar image (.bin, .bin.bz2) or SDK output folder; relative "
                "paths are relative to the current folder",
            )
        board = ctx.string(b, "board", "base")
        if board is not None:
            base.board = board
        return _check_base(ctx, base, line)
    path_s = ctx.string(b, "path", "base")
    remote_keys = [k for k in ("channel", "release", "base_url") if k in b]
    if path_s:
        if remote_keys:
            raise ctx.err(
                ctx.line("base", remote_keys[0]),
                f"base.{remote_keys[0]}",
                "cannot be combined with base.path",
                hint="use either base.path or channel/release/base_url",
            )
        base.path = ctx.path_value(str(path_s), ctx.line("base", "path", default=line), "base.path")
    for key in ("channel", "release", "board", "base_url", "trusted_key"):
        if overrides.get(key):  # the command line wins; do not even expand the manifest's value
            continue
        v = ctx.string(b, key, "base", text_only=key == "release")
        if v is not None:
            setattr(base, key, v)
    _check_base(ctx, base, line)
    kr = None if overrides.get("keyring") else ctx.string(b, "keyring", "base")
    if kr:
        base.keyring = ctx.path_value(kr, ctx.line("base", "keyring"), "base.keyring")
    if "offline" in b:
        if not isinstance(b["offline"], bool):
            raise ctx.err(ctx.line("base", "offline"), "base.offline", "expected true or false")
        base.offline = b["offline"]
    for key in ("base_url", "trusted_key", "offline", "channel", "release"):
        if overrides.get(key) not in (None, False):
            setattr(base, key, overrides[key])
    if overrides.get("keyring"):
        base.keyring = Path(overrides["keyring"]).resolve()
    if base.trusted_key:
        base.trusted_key = base.trusted_key.replace(" ", "").upper()
    return base


def _check_base(ctx: _Ctx, base: Base, line: int) -> Base:
    if base.channel not in CHANNELS:
        raise ctx.err(
            ctx.line("base", "channel", default=line),
            "base.channel",
            f"{base.channel!r} is not one of {', '.join(CHANNELS)}",
        )
    if base.board not in BOARDS:
        raise ctx.err(
            ctx.line("base", "board", default=line),
            "base.board",
            f"{base.board!r} is not one of {', '.join(BOARDS)}",
        )
    return base


def _path_list(ctx: _Ctx, top: dict[str, Any], key: str) -> list[Path]:
    if key not in top or top[key] is None:
        return []
    value = top[key]
    line = ctx.line(key)
    if not isinstance(value, list):
        raise ctx.err(line, key, f"expected a list of paths, got {_kind(value)}")
    out = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ctx.err(line, f"{key}[{i}]", f"expected a path, got {_kind(item)}")
        item_line = ctx.line(key, i)
        s = ctx.expand(item, item_line, f"{key}[{i}]")
        out.append(ctx.path_value(s, item_line, f"{key}[{i}]"))
    return out


def _outputs(ctx: _Ctx, raw: Any) -> list[Output]:
    """`[raw, vhd]` or `[{format: vhd, platform: azure}, ...]` (mixed is fine); a format
    alone takes its default platform (vhd: azure; raw, qcow2: qemu)."""
    if not isinstance(raw, list) or not raw:
        raise ctx.err(
            ctx.line("outputs"),
            "outputs",
            f"expected a non-empty list of {', '.join(OUTPUT_FORMATS)} "
            "or {format: F, platform: P} entries",
        )
    out: list[Output] = []
    for i, item in enumerate(raw):
        where = f"outputs[{i}]"
        line = ctx.loc.line(("outputs", i), ctx.line("outputs"))
        if isinstance(item, dict):
            for key in item:
                if key not in ("format", "platform"):
                    raise ctx.err(
                        ctx.loc.line(("outputs", i, key), line),
                        f"{where}.{key}",
                        "unknown key",
                        hint="allowed keys here: format, platform",
                    )
            if "format" not in item:
                raise ctx.err(line, f"{where}.format", "required key missing")
            fmt, platform = item["format"], item.get("platform")
            fline = ctx.loc.line(("outputs", i, "format"), line)
        else:
            fmt, platform, fline = item, None, line
        if not isinstance(fmt, str) or fmt not in OUTPUT_FORMATS:
            raise ctx.err(
                fline,
                where if not isinstance(item, dict) else f"{where}.format",
                f"unknown format {fmt!r}",
                hint=f"use any of: {', '.join(OUTPUT_FORMATS)}",
            )
        if platform is None:
            platform = DEFAULT_PLATFORM[fmt]
        elif not isinstance(platform, str) or platform not in PLATFORMS:
            raise ctx.err(
                ctx.loc.line(("outputs", i, "platform"), line),
                f"{where}.platform",
                f"unknown platform {platform!r}",
                hint=f"use any of: {', '.join(PLATFORMS)}",
            )
        o = Output(fmt, platform)
        if o not in out:
            out.append(o)
    return out
