"""Which ``Host`` headers the server answers: the names it is reached by, and no other.

A web page on another site can make its own name resolve to this machine (DNS rebinding); the
browser then sends that page's requests to the server with the page's name in ``Host``, and
would let the page read the answers. Refusing names the server does not go by ends that, on
the default loopback setup without a token as everywhere else.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
EVERY_INTERFACE = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class HostRule:
    """The names a server answers to; ``any_address``: also any IP address written as such
    (a server bound to every interface is reached by each of them, and a rebinding needs a
    name, never an address)."""

    names: frozenset[str]
    any_address: bool

    def allows(self, header: str | None) -> bool:
        """Whether a request with this ``Host`` header (None: without one, as HTTP/1.0
        allows; no browser sends that) is answered."""
        if header is None:
            return True
        name = host_name(header)
        return name in self.names or (self.any_address and _is_address(name))


def host_rule(bound: str, allowed: Iterable[str] = ()) -> HostRule:
    """The names of a server listening on ``bound``: the loopback names, the bound address,
    the machine's own names when bound to every interface, and ``allowed`` (``--allowed-host``).
    """
    names = {*LOOPBACK_NAMES, *(host_name(name) for name in allowed)}
    every = bound in EVERY_INTERFACE
    if every:
        names |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    else:
        names.add(host_name(bound))
    return HostRule(frozenset(names), any_address=every)


def host_name(header: str) -> str:
    """The name in a ``Host`` header: no port, no brackets around an IPv6 address, lower case,
    no trailing dot (``[::1]:8000`` -> ``::1``, ``Example.COM.:80`` -> ``example.com``)."""
    text = header.strip().lower()
    if text.startswith("["):
        inside, closed, _ = text[1:].partition("]")
        return inside if closed else text  # "[::1" names nothing
    if text.count(":") == 1:  # name:port (an IPv6 address without brackets has several)
        text = text.partition(":")[0]
    return text.rstrip(".")


def _is_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
