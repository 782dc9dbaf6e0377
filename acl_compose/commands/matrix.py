"""`acl-compose matrix run` and `acl-compose matrix compare`: boot-test matrices on Dask."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from acl_compose.errors import VerificationError
from acl_compose.matrix import (
    RunOptions,
    SshOptions,
    check_spec,
    compare_runs,
    load_matrix,
    report_lines,
    run_matrix,
    summary_lines,
)
from acl_compose.ui import App, pass_app


@click.group("matrix")
def matrix_cmd() -> None:
    """Run boot-test matrices on a Dask cluster and compare their results."""


@matrix_cmd.command("run")
@click.argument(
    "matrix_file",
    metavar="MATRIX.yaml",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--cluster",
    "cluster_spec",
    default="local:1",
    show_default=True,
    help="local:N, ssh://[user@]host[:port][,host...], or tcp://scheduler:8786.",
)
@click.option(
    "-o",
    "--output",
    "results_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="RESULTS_DIR: journal, per-cell results, junit.xml, summary.json.",
)
@click.option("--resume", is_flag=True, help="Finish a run in RESULTS_DIR: skip finished cells.")
@click.option(
    "--vms-per-worker",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="`vm` slots per worker this command starts (size by memory).",
)
@click.option(
    "--worker-cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Image cache on the workers [default: --cache-dir for local:N, else the "
    "worker's own ~/.cache/acl-compose].",
)
@click.option(
    "--ssh-identity",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh://: private key for the hosts [default: asyncssh's, ~/.ssh/id_*].",
)
@click.option(
    "--ssh-known-hosts",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="ssh://: known_hosts to check host keys against [default: ~/.ssh/known_hosts].",
)
@click.option(
    "--remote-python",
    default=sys.executable,
    show_default="this Python",
    help="ssh://: the Python (with acl-compose installed) to run on each host.",
)
@pass_app
def run_cmd(
    app: App,
    matrix_file: Path,
    cluster_spec: str,
    results_dir: Path,
    resume: bool,
    vms_per_worker: int,
    worker_cache_dir: Path | None,
    ssh_identity: Path | None,
    ssh_known_hosts: Path | None,
    remote_python: str,
) -> None:
    """Run every cell of MATRIX.yaml on a Dask cluster; exit 1 unless all cells pass."""
    kind = check_spec(cluster_spec)
    matrix = load_matrix(matrix_file)
    if worker_cache_dir is None and kind == "local":
        worker_cache_dir = app.cache_dir
    opts = RunOptions(
        cluster=cluster_spec,
        results_dir=results_dir.resolve(),
        resume=resume,
        vms_per_worker=vms_per_worker,
        worker_cache_dir=worker_cache_dir.resolve() if worker_cache_dir else None,
        ssh=SshOptions(ssh_identity, ssh_known_hosts, remote_python),
    )
    summary = run_matrix(matrix, opts)
    app.emit(summary, [*summary_lines(summary), f"JUnit XML: {summary['junit_xml']}"])
    if not summary["ok"]:
        bad = [c["cell"] for c in summary["cells"] if c["status"] != "passed"]
        raise VerificationError(
            f"{len(bad)} of {summary['totals']['cells']} cells did not pass: {', '.join(bad[:5])}",
            hint=f"see {results_dir}/cells/<cell>/ (junit.xml, console.log, result.json)",
        )


@matrix_cmd.command("compare")
@click.argument("baseline", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("candidate", type=click.Path(exists=True, file_okay=False, path_type=Path))
@pass_app
def compare_cmd(app: App, baseline: Path, candidate: Path) -> None:
    """Tests that pass on BASELINE and fail on CANDIDATE (exit 1), fixed, new, flaky."""
    rep = compare_runs(baseline, candidate)
    app.emit(rep, report_lines(rep))
    if not rep["ok"]:
        raise VerificationError(
            f"{len(rep['regressions'])} regression(s) in {candidate} against {baseline}",
            hint="see the REGRESSION lines (or --json); each names the cell and the test",
        )


COMMANDS: list[click.Command] = [matrix_cmd]
