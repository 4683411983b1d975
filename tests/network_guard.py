"""The tests' network guard (installed by conftest.py): refuse connections off this machine.

Light on purpose (no torch): tests/test_imports.py installs it in fresh interpreters.
"""

import ipaddress
import socket

__all__ = ["NetworkBlockedError", "block_network"]


class NetworkBlockedError(ConnectionRefusedError):
    """A connection outside this machine, refused by the tests' network guard."""


def _is_local(family: int, address) -> bool:
    if family not in (socket.AF_INET, socket.AF_INET6):  # Unix sockets, netlink ...
        return True
    host = address[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: resolving it would use the network
        return False


def block_network(attempts: list):
    """Make ``socket.connect``/``connect_ex`` refuse non-local addresses, appending each
    refused ``(family, address)`` to ``attempts``. Returns a function that undoes it."""
    original = {name: getattr(socket.socket, name) for name in ("connect", "connect_ex")}

    def guarded(name):
        def call(sock, address):
            if not _is_local(sock.family, address):
                attempts.append((sock.family, address))
                raise NetworkBlockedError(f"the tests' network guard refused a connection to {address!r}")
            return original[name](sock, address)

        return call

    for name in original:
        setattr(socket.socket, name, guarded(name))

    def restore():
        for name, function in original.items():
            setattr(socket.socket, name, function)

    return restore
