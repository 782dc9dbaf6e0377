"""`acl-compose ignition render|validate|merge`: Butane-style YAML to checked Ignition JSON."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from acl_compose import ignition
from acl_compose.ignition import IgnitionError, Locator
from acl_compose.ui import App, pass_app, warn
from acl_compose.util import atomic_write, refuse_overwriting_inputs, scratch_dir

T = TypeVar("T")

FILES_DIR = click.option(
    "--files-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory that `local:`, `contents_local:` and `trees:` paths are relative to.",
)


def _fail(errors: list[str], hint: str | None = None) -> None:
    """Print every located error; the last one goes through cli.main with the hint."""
    for msg in errors[:-1]:
        click.echo(f"error: {msg}", err=True)
    raise IgnitionError(errors[-1:], hint)


def _all_errors(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except IgnitionError as e:
        _fail(e.errors, e.hint)
        raise  # unreachable: _fail raises


def _write(config: dict[str, Any], output: Path, pretty: bool) -> dict[str, Any]:
    data = (ignition.dumps(config, pretty) + "\n").encode()
    atomic_write(output, data)
    return {
        "output": str(output),
        "version": config["ignition"]["version"],
        "size": len(data),
        "sha512": hashlib.sha512(data).hexdigest(),
    }


@click.group("ignition")
def ignition_group() -> None:
    """Author Ignition configs: Butane-style YAML (variant: flatcar) to validated JSON."""


@ignition_group.command("render", short_help="Render Butane-style YAML to Ignition JSON.")
@click.argument("input_", metavar="INPUT.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the Ignition JSON here [default: stdout].",
)
@FILES_DIR
@click.option("--pretty", is_flag=True, help="Indented JSON instead of compact.")
@pass_app
def render_cmd(
    app: App, input_: Path, output: Path | None, files_dir: Path | None, pretty: bool
) -> None:
    """Render INPUT.yaml (version 1.0.0 -> Ignition 3.3.0, 1.1.0 -> 3.4.0)."""
    warnings: list[str] = []
    config = _all_errors(lambda: ignition.render(input_, files_dir, warnings))
    for w in warnings:
        warn(w)
    if output is None:
        click.echo(ignition.dumps(config, pretty))
        return
    refuse_overwriting_inputs(output, input_)
    result = _write(config, output, pretty)
    result["warnings"] = warnings
    app.emit(result, f"wrote {output} (Ignition {result['version']}, {result['size']} bytes)")


def _validate_one(path: Path, files_dir: Path | None, hints: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {
        "path": str(path),
        "valid": False,
        "version": None,
        "warnings": [],
        "errors": [],
        "ignition_validate": None,
    }
    try:
        config = ignition.load(path, files_dir, result["warnings"])
    except IgnitionError as e:
        result["errors"] = e.errors
        hints.append(e.hint)
        return result
    result["version"] = config["ignition"]["version"]
    if ignition.is_json(path, path.read_text()):
        iv = ignition.run_ignition_validate(path)
    else:  # check what render would write
        with scratch_dir(prefix="acl-ign-") as tmp:
            rendered = Path(tmp, "rendered.ign")
            rendered.write_text(ignition.dumps(config))
            iv = ignition.run_ignition_validate(rendered)
    result["ignition_validate"] = iv
    if iv["verdict"] == "invalid":
        result["errors"] = [f"{path}: ignition-validate: {m}" for m in iv["messages"]]
    result["valid"] = not result["errors"]
    return result


def _verdict_text(r: dict[str, Any]) -> str:
    iv = r["ignition_validate"] or {}
    tool = {
        "ok": "ignition-validate: ok",
        "invalid": "ignition-validate: INVALID",
        "unsupported": f"ignition-validate ({iv.get('version')}) does not know spec "
        f"{r['version']}; skipped",
        "missing": "ignition-validate not installed (apt-get install ignition)",
    }.get(iv.get("verdict"), "")
    return f"{r['path']}: {'valid' if r['valid'] else 'invalid'}, Ignition {r['version']}; {tool}"


@ignition_group.command("validate", short_help="Validate Ignition JSON or YAML configs.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@FILES_DIR
@pass_app
def validate_cmd(app: App, files: tuple[Path, ...], files_dir: Path | None) -> None:
    """Validate Ignition JSON (or Butane-style YAML) FILES; runs ignition-validate too."""
    hints: list[str] = []
    results = [_validate_one(f, files_dir, hints) for f in files]
    for r in results:
        for w in r["warnings"]:
            warn(w)
    app.emit(results, [_verdict_text(r) for r in results if r["version"]])
    errors = [e for r in results for e in r["errors"]]
    if errors:
        _fail(errors, hints[-1] if hints else None)


@ignition_group.command("merge", short_help="Merge configs with Ignition's rules.")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the merged Ignition JSON here [default: stdout].",
)
@FILES_DIR
@click.option("--pretty", is_flag=True, help="Indented JSON instead of compact.")
@pass_app
def merge_cmd(
    app: App, files: tuple[Path, ...], output: Path | None, files_dir: Path | None, pretty: bool
) -> None:
    """Merge FILES (YAML or JSON) left to right with Ignition's rules: later entries win."""
    warnings: list[str] = []
    configs = [_all_errors(lambda f=f: ignition.load(f, files_dir, warnings)) for f in files]
    versions = [c["ignition"]["version"] for c in configs]
    if len(set(versions)) > 1:
        warnings.append(
            f"mixing Ignition specs {', '.join(sorted(set(versions)))}; the result "
            f"uses the last config's {versions[-1]}"
        )
    merged = ignition.merge(configs)
    warnings += _all_errors(lambda: ignition.validate(merged, Locator("merged result")))
    for w in warnings:
        warn(w)
    if output is None:
        click.echo(ignition.dumps(merged, pretty))
        return
    refuse_overwriting_inputs(output, *files)
    result = _write(merged, output, pretty)
    result.update(inputs=[str(f) for f in files], warnings=warnings)
    app.emit(
        result,
        f"wrote {output} (Ignition {result['version']}, merged {len(files)} "
        f"configs, {result['size']} bytes)",
    )


COMMANDS: list[click.Command] = [ignition_group]
