"""`--cluster SPEC` -> a Dask client whose workers offer `vm` slots.

- `local:N`: a LocalCluster of N worker processes on this machine.
- `ssh://[user@]host[:port][,host...]`: an SSHCluster (asyncssh): the scheduler on the first
  host, a worker on every host listed. Each host needs this package installed under the same
  Python (`--remote-python`).
- `tcp://host:8786` (or `tls://`): any running Dask scheduler, however it was deployed
  (dask-kubernetes, dask-jobqueue, `dask scheduler` + `dask worker --resources vm=N`).

A cell asks for one `vm` resource, so a worker runs at most as many VMs as it has slots.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from acl_compose.errors import InputError, ToolError
from acl_compose.ui import opt

RESOURCE = "vm"
# Workers left without a scheduler (the client was killed) shut down after this long, and
# their running cells die with them (PR_SET_PDEATHSIG).
DEATH_TIMEOUT = 15
_HOST = re.compile(
    r"^(?:(?P<user>[^@/:,]+)@)?(?P<host>\[[0-9a-fA-F:]+\]|[^@/:,\[\]\s]+)(?::(?P<port>\d+))?$"
)


@dataclass
class SshOptions:
    identity: Path | None = None
    known_hosts: Path | None = None
    remote_python: str = sys.executable


def _require_dask() -> None:
    try:
        import distributed  # noqa: F401
    except ImportError as e:
        raise ToolError(
            "Dask distributed is not installed",
            hint="pip install 'acl-compose[matrix]' (or `make deps`)",
        ) from e


def _cluster(spec: str) -> str:
    """`--cluster SPEC` where the command has that option (errors name only options it has)."""
    return f"{opt('--cluster', 'cluster')} {spec}"


def parse_ssh(spec: str) -> list[dict[str, Any]]:
    """ssh://[user@]host[:port],... -> [{host, port, username}] (InputError if malformed)."""
    hosts = []
    for part in spec.removeprefix("ssh://").split(","):
        m = _HOST.match(part.strip())
        if not m:
            raise InputError(
                f"{_cluster(spec)}: cannot read host {part!r}",
                hint="use ssh://[user@]host[:port][,host2...]",
            )
        h = {"host": m.group("host").strip("[]")}
        if m.group("port"):
            h["port"] = int(m.group("port"))
        if m.group("user"):
            h["username"] = m.group("user")
        hosts.append(h)
    return hosts


def check_spec(spec: str) -> str:
    """Validate `--cluster` before anything starts; returns the kind."""
    if spec.startswith("local:"):
        n = spec.removeprefix("local:")
        if not n.isdigit() or int(n) < 1:
            raise InputError(f"{_cluster(spec)}: expected local:N with N >= 1")
        return "local"
    if spec.startswith("ssh://"):
        parse_ssh(spec)
        return "ssh"
    if spec.startswith(("tcp://", "tls://")):
        return "address"
    raise InputError(
        f"{_cluster(spec)}: unknown cluster",
        hint="use local:N, ssh://host1,host2 or tcp://scheduler:8786",
    )


@contextlib.contextmanager
def connect(spec: str, vms_per_worker: int = 1, ssh: SshOptions | None = None) -> Iterator[Any]:
    """A connected `distributed.Client`; the cluster (if started here) is closed on exit."""
    kind = check_spec(spec)
    _require_dask()
    from distributed import Client

    logging.getLogger("distributed").setLevel(logging.ERROR)
    worker_opts = {"resources": {RESOURCE: vms_per_worker}, "death_timeout": DEATH_TIMEOUT}
    cluster: Any = None
    try:
        if kind == "local":
            from distributed import LocalCluster

            cluster = LocalCluster(
                n_workers=int(spec.removeprefix("local:")),
                threads_per_worker=vms_per_worker,
                processes=True,
                host="127.0.0.1",
                dashboard_address=None,
                silence_logs=logging.ERROR,
                **worker_opts,
            )
            client = Client(cluster, set_as_default=False)
        elif kind == "ssh":
            cluster = _ssh_cluster(spec, worker_opts, vms_per_worker, ssh or SshOptions())
            client = Client(cluster, set_as_default=False)
        else:
            client = Client(spec, set_as_default=False, timeout=30)
    except (OSError, TimeoutError) as e:
        if cluster is not None:
            cluster.close()
        raise ToolError(
            f"{_cluster(spec)}: cannot start or reach the cluster: {e}",
            hint="check the hosts, SSH keys and that the scheduler runs",
        ) from e
    try:
        _check_slots(client, spec)
        yield client
    finally:
        with contextlib.suppress(Exception):
            client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


def _ssh_cluster(spec: str, worker_opts: dict, vms: int, ssh: SshOptions) -> Any:
    from distributed.deploy.ssh import SSHCluster

    hosts = parse_ssh(spec)
    connect_options = []
    for h in [hosts[0], *hosts]:  # the scheduler on the first host, then a worker per host
        opts: dict[str, Any] = {k: v for k, v in h.items() if k != "host"}
        if ssh.identity:
            opts["client_keys"] = [str(ssh.identity)]
        if ssh.known_hosts:
            opts["known_hosts"] = str(ssh.known_hosts)
        connect_options.append(opts)
    # One host for everything (ssh://127.0.0.1): workers listen there too, not on whatever
    # interface they would pick. Several hosts: each worker picks its own reachable address.
    one = len({h["host"] for h in hosts}) == 1
    bind = {"host": hosts[0]["host"]} if one else {}
    return SSHCluster(
        hosts=[hosts[0]["host"], *(h["host"] for h in hosts)],
        connect_options=connect_options,
        worker_options={"nthreads": vms, **worker_opts, **bind},
        scheduler_options={"port": 0, "dashboard_address": None, "host": hosts[0]["host"]},
        remote_python=ssh.remote_python,
    )


def _check_slots(client: Any, spec: str) -> None:
    workers = client.scheduler_info().get("workers", {})
    if not any(w.get("resources", {}).get(RESOURCE) for w in workers.values()):
        try:
            client.wait_for_workers(1, timeout=30)
        except TimeoutError as e:
            raise ToolError(
                f"{_cluster(spec)}: no worker joined within 30s",
                hint="start workers: `dask worker ADDRESS --resources vm=1`",
            ) from e
        workers = client.scheduler_info().get("workers", {})
        if not any(w.get("resources", {}).get(RESOURCE) for w in workers.values()):
            raise InputError(
                f"{_cluster(spec)}: no worker offers the '{RESOURCE}' resource",
                hint="start workers with `dask worker ADDRESS --resources vm=N` (N VMs at once)",
            )
