"""Where the server listens: `host` (one name or address, or several separated by commas) bound before anything
else starts, so that an unusable host is one line rather than a failure deep inside the web server."""

from __future__ import annotations

import ipaddress
import logging
import socket

from gpt2kit.errors import GPT2KitError

logger = logging.getLogger(__name__)


def host_names(host: str) -> list[str]:
    """The hosts in `host`: `127.0.0.1`, `::1`, `[::1]`, `localhost` or a comma-separated list of them."""
    names = [name.strip() for name in host.split(",")]
    if not all(names):
        raise GPT2KitError(f"host {host!r}: an empty name or address (separate several with commas)")
    return [name[1:-1] if name.startswith("[") and name.endswith("]") else name for name in names]


def _address(name: str, port: int) -> tuple:
    """getaddrinfo's first answer for `name`, as a plain bind would take it."""
    try:
        return socket.getaddrinfo(name, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as err:
        raise GPT2KitError(f"host {name!r} does not resolve to an address ({err.strerror})") from None
    except (UnicodeError, ValueError) as err:  # a label over 63 characters, a NUL
        raise GPT2KitError(f"host {name!r} is not a valid host name ({err})") from None


def _shown(address: tuple) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def bind(host: str, port: int) -> list[socket.socket]:
    """A bound socket for each host in `host`; a host that does not resolve or cannot be bound is one line.

    Warns once for each address other machines can reach.
    """
    sockets: list[socket.socket] = []
    try:
        for name in host_names(host):
            family, kind, proto, _, address = _address(name, port)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:  # so that `0.0.0.0,::` binds both families
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as err:
                raise GPT2KitError(f"host {name!r}: cannot listen on {_shown(address)} ({err.strerror})") from None
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    for sock in sockets:
        address = sock.getsockname()
        if not ipaddress.ip_address(address[0].split("%")[0]).is_loopback:
            logger.warning("listening on %s: the server is reachable from other machines", _shown(address))
    return sockets
