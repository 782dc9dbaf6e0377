"""`acl-compose boot` and `acl-compose test`: boot an image under QEMU, run qemu-tests."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import click

from acl_compose.boot import ACCELS, FIRMWARES, PLATFORMS, VM, boot_and_wait, run_suites
from acl_compose.errors import VerificationError
from acl_compose.image import firmware as firmware_check
from acl_compose.ui import App, info, pass_app, warn

_image = click.argument("image", type=click.Path(exists=True, dir_okay=False, path_type=Path))
_firmware = click.option(
    "--firmware",
    type=click.Choice(FIRMWARES),
    default="uefi",
    show_default=True,
    help="uefi: OVMF disk boot; bios: SeaBIOS; kernel: the ESP's kernel booted directly.",
)
_accel = click.option(
    "--accel",
    type=click.Choice(ACCELS),
    default="auto",
    show_default=True,
    help="auto uses KVM only if a probe guest runs on it, else TCG.",
)
_memory = click.option("--memory", type=click.IntRange(256), default=2048, show_default=True,
                       help="Guest memory in MiB.")  # fmt: skip
_cpus = click.option("--cpus", type=click.IntRange(1), default=2, show_default=True,
                     help="Guest CPUs.")  # fmt: skip
_ignition = click.option(
    "--ignition",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Ignition user config (.ign, or .yaml rendered): passed by fw_cfg, or as Azure's "
    "custom data with --platform azure.",
)
_platform = click.option(
    "--platform",
    type=click.Choice(PLATFORMS),
    default="qemu",
    show_default=True,
    help="How the config reaches the guest: qemu (fw_cfg) or azure (as on Azure: a UDF DVD "
    "with ovf-env.xml and CustomData.bin, loopback stand-ins for the wire server and IMDS).",
)
_timeout = click.option(
    "--boot-timeout",
    type=float,
    default=None,
    help="Seconds to wait for SSH [default: 240 under KVM, 900 under TCG].",
)


@click.command("boot")
@_image
@_firmware
@_accel
@_memory
@_cpus
@_ignition
@_platform
@click.option("--ssh", is_flag=True, help="Wait for SSH and print how to log in.")
@click.option(
    "--keep",
    is_flag=True,
    help="Keep the VM's temporary directory (overlay, log). Without it a failed boot still "
    "keeps its console log and QEMU command line, in a folder the error names.",
)
@click.option(
    "--run", "command", metavar="CMD", help="Run CMD over SSH (implies --ssh), then stop."
)
@_timeout
@pass_app
def boot_cmd(
    app: App,
    image: Path,
    firmware: str,
    accel: str,
    memory: int,
    cpus: int,
    ignition: Path | None,
    platform: str,
    ssh: bool,
    keep: bool,
    command: str | None,
    boot_timeout: float | None,
) -> None:
    """Boot IMAGE under QEMU (the image is never written) until Ctrl-C or power-off."""
    if command and not ssh:
        ssh = True
    # An image this firmware cannot boot is refused now, with the reason, not after a timeout.
    firmware_check.require(image, firmware)
    with VM(
        image,
        firmware=firmware,
        accel=accel,
        memory=memory,
        cpus=cpus,
        ignition=ignition,
        platform=platform,
        ssh=ssh,
        cache_dir=app.cache_dir,
        keep=keep,
        boot_timeout=boot_timeout,
    ) as vm:
        info(f"qemu pid {vm.pid} ({firmware}, {vm.accel}); console: {vm.console_log}")
        data: dict[str, object] = {
            "image": str(image),
            "firmware": firmware,
            "accel": vm.accel,
            "pid": vm.pid,
            "console_log": str(vm.console_log),
            "workdir": str(vm.workdir) if keep else None,
        }
        if platform == "azure" and keep and vm.workdir:  # what the stand-ins recorded, kept
            data["azure_record"] = str(vm.workdir / "azure-record.jsonl")
        if ssh:
            result = boot_and_wait(vm)
            data.update(
                ssh_port=vm.port,
                ssh_config=str(vm.ssh_config),
                boot_to_ssh_seconds=round(result.seconds, 1),
                state=result.state,
                failed_units=result.failed_units,
            )
            if command:
                proc = vm.ssh(command, timeout=600)
                out = proc.stdout.decode(errors="replace")
                data.update(exit_status=proc.returncode, stdout=out)
                app.emit(data, out.rstrip("\n") or None)
                if keep:
                    info(f"kept {vm.workdir}")
                if proc.returncode:
                    raise click.exceptions.Exit(proc.returncode)
                return
            app.emit(
                data,
                [
                    f"SSH after {result.seconds:.1f}s ({result.state}); log in with:",
                    f"  ssh -F {shlex.quote(str(vm.ssh_config))} vm",
                    "Ctrl-C stops the VM.",
                ],
            )
        else:
            app.emit(data, f"running; console log {vm.console_log}; Ctrl-C stops the VM.")
        try:
            while vm.alive():
                time.sleep(0.5)
            info(f"the guest powered off (qemu exit status {vm.proc.returncode})")  # type: ignore[union-attr]
        except KeyboardInterrupt:
            info("stopping the VM")
        if keep:
            info(f"kept {vm.workdir}")


@click.command("test")
@_image
@click.option(
    "--release-json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="compose's release.json: what the suites expect (else release checks are skipped).",
)
@click.option(
    "--suite",
    "suites",
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Test folder or file (repeatable) [default: qemu-tests/].",
)
@click.option(
    "--junit-xml",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("qemu-tests-results/junit.xml"),
    show_default=True,
    help="JUnit XML; console log, journal and ssh_config are kept beside it.",
)
@click.option("--parallel", type=click.IntRange(1, 8), default=1, show_default=True,
              help="VMs booted at once; test files are split across them.")  # fmt: skip
@click.option("-k", "keyword", metavar="EXPR", help="Only tests matching EXPR (pytest -k).")
@_firmware
@_accel
@_memory
@_cpus
@_ignition
@_platform
@_timeout
@pass_app
def test_cmd(
    app: App,
    image: Path,
    release_json: Path | None,
    suites: tuple[Path, ...],
    junit_xml: Path,
    parallel: int,
    keyword: str | None,
    firmware: str,
    accel: str,
    memory: int,
    cpus: int,
    ignition: Path | None,
    platform: str,
    boot_timeout: float | None,
) -> None:
    """Boot IMAGE and run the qemu-tests suites against it with pytest-testinfra."""
    if release_json is None:
        guess = image.parent / "release.json"
        if guess.is_file():
            release_json = guess
            info(f"using {guess}")
        else:
            warn("no release.json: release-specific checks will be skipped")
    result = run_suites(
        image,
        suites=list(suites) or None,
        release_json=release_json,
        junit_xml=junit_xml,
        parallel=parallel,
        keyword=keyword,
        firmware=firmware,
        accel=accel,
        memory=memory,
        cpus=cpus,
        ignition=ignition,
        platform=platform,
        cache_dir=app.cache_dir,
        boot_timeout=boot_timeout,
    )
    c = result.counts
    boots = ", ".join(f"{s:.1f}s" for s in result.boot_seconds)
    lines = [
        f"{c.passed} passed, {c.failures} failed, {c.errors} errors, {c.skipped} skipped "
        f"({result.accel}, {result.firmware}; boot-to-SSH {boots}; {result.seconds:.0f}s total)",
        *[f"not applicable: {n}" for n in result.not_applicable],
        *[f"skipped without a declared reason: {n}" for n in result.undeclared_skips],
        f"JUnit XML: {result.junit_xml}",
        *[f"artifact: {a}" for a in result.artifacts if a.exists()],
    ]
    app.emit(result.to_json(), lines)
    if not result.ok:
        skips = [n.split(": ", 1)[0] + " (skipped)" for n in result.undeclared_skips]
        bad = result.failed_tests + skips
        names = ", ".join(bad[:5]) or f"pytest exit status {result.returncode}"
        hint = f"see {result.junit_xml} and the console log beside it"
        if result.undeclared_skips and not result.failed_tests:
            hint = (
                "with a release.json every test must run: make the image satisfy it, or mark "
                'a test that cannot apply (e.g. @pytest.mark.platform("azure")), see '
                "qemu-tests/README.md"
            )
        raise VerificationError(f"qemu-tests failed: {names}", hint=hint)


COMMANDS: list[click.Command] = [boot_cmd, test_cmd]
