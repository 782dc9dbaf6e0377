"""The guest is isolated: it reaches nothing but what the harness forwards to it.

acl-compose boots test VMs with QEMU user networking and `restrict=on`. Without it, the guest
reaches the host's loopback through QEMU's host address 10.0.2.2 (slirp maps it to 127.0.0.1)
and anything the host can reach. With it, slirp hands out no default route and no DNS server,
and resets connections to anything but the forwards.
"""

from __future__ import annotations

import os
import socket
from typing import Any

# QEMU user networking's host address: the default network's (the guest is 10.0.2.15/24), or,
# booted as on Azure (--platform azure), that of the network holding the wire server stand-in
# (168.63.129.16/28; the guest is .20), whose only other reachable addresses are forwards.
AZURE = os.environ.get("ACL_COMPOSE_PLATFORM") == "azure"
NET = "168.63.129." if AZURE else "10.0.2."
QEMU_HOST, DNS = (NET + "17", NET + "18") if AZURE else (NET + "2", NET + "3")
# Outside addresses: public resolvers and a documentation address (RFC 5737).
OUTSIDE = (("1.1.1.1", 443), ("8.8.8.8", 53), ("192.0.2.1", 80))
# A refused connection takes milliseconds; a silently dropped one would hang until the timeout.
AT_ONCE_MS = 5000


def connect(host: Any, address: str, port: int) -> tuple[int, int, str]:
    """(exit status, milliseconds, error) of a TCP connect from the guest (bash's /dev/tcp)."""
    out = host.run(
        "s=$(date +%%s%%N); e=$(timeout 20 bash -c 'exec 3<>/dev/tcp/%s/%s' 2>&1); rc=$?; "
        'echo "$rc $(( ($(date +%%s%%N) - s) / 1000000 )) $e"',
        address,
        str(port),
    )
    rc, ms, error = (out.stdout.strip() + " ").split(" ", 2)
    return int(rc), int(ms), error.strip()


def test_no_route_or_resolver_beyond_the_host(host: Any) -> None:
    """The guest's DNS, NTP and HTTP have nowhere to go: no default route, no DNS server."""
    assert NET in host.check_output("ip -4 -o addr show scope global"), (
        f"the guest is not on QEMU's user network ({NET}x)"
    )
    routes = host.check_output("ip -4 route show default")
    assert not routes, f"the guest has a default route: {routes}"
    dns = host.run("resolvectl dns 2>/dev/null || grep ^nameserver /etc/resolv.conf").stdout
    assert DNS not in dns, f"the guest was given QEMU's DNS server: {dns}"


def test_guest_cannot_reach_the_host_or_outside(host: Any) -> None:
    with socket.socket() as listener:  # a service on the host's loopback
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        problems = []
        for address, p in ((QEMU_HOST, port), *OUTSIDE):
            rc, ms, error = connect(host, address, p)
            if rc == 0:
                problems.append(f"{address}:{p}: the guest connected")
            elif ms > AT_ONCE_MS:
                problems.append(f"{address}:{p}: failed only after {ms} ms (not at once): {error}")
            elif address == QEMU_HOST and "refused" not in error:
                # On-link, so only QEMU's reset can make this fail: proof of restrict=on.
                problems.append(f"{address}:{p}: {error!r}, expected a refused connection")
        try:
            conn, peer = listener.accept()
            conn.close()
            problems.append(f"the host's loopback service saw a connection from {peer}")
        except TimeoutError:
            pass
    assert not problems, "\n".join(problems)
