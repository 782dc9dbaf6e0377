"""Relay one guest connection to a loopback server: `python relay.py HOST PORT`.

QEMU user networking runs this for each guest connection to a `guestfwd=...-cmd:` address,
with the connection as stdin, stdout and stderr. So it imports only the standard library
(it runs as a plain script), and nothing may be printed: every byte written goes to the guest.
"""

import os
import selectors
import socket
import sys


def main() -> int:
    host, port = sys.argv[1], int(sys.argv[2])
    guest = socket.socket(fileno=0)
    server = socket.create_connection((host, port), timeout=30)
    server.settimeout(None)
    sel = selectors.DefaultSelector()
    peers = {guest: server, server: guest}
    for s in peers:
        sel.register(s, selectors.EVENT_READ)
    open_ = 2
    while open_:
        for key, _ in sel.select():
            src = key.fileobj
            data = src.recv(65536)  # type: ignore[union-attr]
            if data:
                peers[src].sendall(data)  # type: ignore[index]
                continue
            sel.unregister(src)
            open_ -= 1
            try:
                peers[src].shutdown(socket.SHUT_WR)  # type: ignore[index]
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - a traceback must not reach the guest
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - the guest sees a closed connection, nothing else
        code = 1
    os._exit(code)
