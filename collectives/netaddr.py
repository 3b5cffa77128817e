"""Which address of this host the other ranks should use (``deepseek.collectives.netaddr``).

A rank that talks TCP to ranks on other hosts must advertise an address those hosts can
reach, and should listen only there. ``gethostbyname(gethostname())`` is no answer: on
many hosts it is 127.0.0.1, so every peer would connect to itself. The order here:

1. ``DEEPSEEK_ZMQ_HOST``: an explicit address (IP or host name) -- used as given.
2. ``DEEPSEEK_SOCKET_IFNAME``: an interface name (like ``GLOO_SOCKET_IFNAME`` /
   ``NCCL_SOCKET_IFNAME``); its first IPv4 address is used (IPv6 when it has none).
3. The address of the interface that routes to the job's rendezvous host
   (``MASTER_ADDR``, else the store's host): a UDP socket ``connect`` sends nothing and
   makes the kernel pick the source address it would use (what PyTorch does).
4. The host name's address, and 127.0.0.1 when nothing else is known.

``bind_address`` is where to listen: ``DEEPSEEK_ZMQ_BIND`` (an IP, an interface name,
or ``*`` / ``0.0.0.0`` for every interface) when set, else the advertised address.
Bad values raise :class:`~deepseek.collectives.errors.CollectiveError` naming the
variable, what it held and what was expected.
"""
import ipaddress
import os
import socket

from .errors import CollectiveError

ENV_HOST = "DEEPSEEK_ZMQ_HOST"
ENV_IFNAME = "DEEPSEEK_SOCKET_IFNAME"
ENV_BIND = "DEEPSEEK_ZMQ_BIND"

__all__ = ["advertise_address", "bind_address", "interface_address", "route_address",
           "is_loopback", "ENV_HOST", "ENV_IFNAME", "ENV_BIND"]


def _ip(text):
    """``text`` as an ip_address, or None when it is not a literal address."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def is_loopback(addr):
    """Whether ``addr`` (an IP literal) is a loopback address."""
    ip = _ip(addr)
    return ip is not None and ip.is_loopback


def interface_address(name, var=ENV_IFNAME):
    """The IPv4 address of network interface ``name`` (IPv6 if it has no IPv4).

    ``var`` names where ``name`` came from, for the error when there is no such
    interface or it has no address.
    """
    import psutil  # a dependency of deepseek; imported here to keep the module cheap

    addrs = psutil.net_if_addrs()
    if name not in addrs:
        raise CollectiveError(
            f"{var}={name!r}: no such network interface on {socket.gethostname()} "
            f"(expected one of: {', '.join(sorted(addrs)) or 'none'})")
    by_family = {}
    for a in addrs[name]:
        if a.family in (socket.AF_INET, socket.AF_INET6):
            by_family.setdefault(a.family, a.address.split("%")[0])
    for fam in (socket.AF_INET, socket.AF_INET6):
        if fam in by_family:
            return by_family[fam]
    raise CollectiveError(f"{var}={name!r}: the interface has no IPv4 or IPv6 address")


def route_address(target, var="MASTER_ADDR"):
    """The local address the kernel would use to reach ``target`` (a host or IP).

    Nothing is sent: ``connect`` on a UDP socket only chooses the route.
    """
    try:
        infos = socket.getaddrinfo(target, 9, 0, socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as e:
        raise CollectiveError(
            f"{var}={target!r}: cannot resolve the host name ({e}); expected an IP "
            f"address or a name of the rendezvous host") from None
    last = None
    for family, _, _, _, sockaddr in infos:
        s = socket.socket(family, socket.SOCK_DGRAM)
        try:
            s.connect(sockaddr)
            return s.getsockname()[0].split("%")[0]
        except OSError as e:
            last = e
        finally:
            s.close()
    raise CollectiveError(f"{var}={target!r}: no route to the host ({last})")


def _hostname_address():
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def advertise_address(environ=None, rendezvous_host=None):
    """The address peers should connect to (see the module docstring for the order).

    ``rendezvous_host``: the store's host, used when ``MASTER_ADDR`` is not set.
    """
    env = os.environ if environ is None else environ
    host = env.get(ENV_HOST, "").strip()
    if host:
        _check_host(host, ENV_HOST)
        return host
    ifname = env.get(ENV_IFNAME, "").strip()
    if ifname:
        return interface_address(ifname, ENV_IFNAME)
    master = env.get("MASTER_ADDR", "").strip()
    if master:
        return route_address(master, "MASTER_ADDR")
    if rendezvous_host:
        return route_address(rendezvous_host, "the store host")
    return _hostname_address()


def _check_host(host, var):
    if _ip(host) is not None:
        return
    try:
        socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:
        raise CollectiveError(
            f"{var}={host!r}: not an IP address and the name does not resolve ({e}); "
            f"expected an address of this host that the other hosts can reach") from None


def resolve(host, var):
    """An IP literal for ``host`` (names are resolved; IPv4 preferred)."""
    if _ip(host) is not None:
        return host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError) as e:
        raise CollectiveError(f"{var}={host!r}: the name does not resolve ({e})") from None
    infos.sort(key=lambda i: i[0] != socket.AF_INET)
    return infos[0][4][0]


def bind_address(advertised, environ=None):
    """The IP (or ``*``) to listen on: ``DEEPSEEK_ZMQ_BIND`` or the advertised address."""
    env = os.environ if environ is None else environ
    bind = env.get(ENV_BIND, "").strip()
    if not bind:
        return resolve(advertised, ENV_HOST)
    if bind in ("*", "0.0.0.0", "::"):
        return "*" if bind != "::" else "::"
    if _ip(bind) is not None:
        return bind.strip("[]")
    import psutil

    if bind in psutil.net_if_addrs():
        return interface_address(bind, ENV_BIND)
    raise CollectiveError(
        f"{ENV_BIND}={bind!r}: expected an IP address of this host, an interface name "
        f"({', '.join(sorted(psutil.net_if_addrs()))}) or '*' for every interface")


def zmq_endpoint(host, port):
    """``tcp://host:port`` with IPv6 literals in brackets."""
    ip = _ip(host)
    if ip is not None and ip.version == 6:
        return f"tcp://[{ip}]:{port}"
    return f"tcp://{host}:{port}"
