"""Where a webhook may go: the URL rules and the address check against SSRF.

- Only ``http`` and ``https`` URLs, with a host, without a user or password, at most
  2000 characters; ``https`` only in production unless WEBHOOK_ALLOW_HTTP=true.
- Every address the host resolves to must be public: loopback, private, link-local (the
  cloud's metadata service, 169.254.169.254), shared, multicast, reserved and unspecified
  addresses are refused, and so are IPv6 forms that carry such an IPv4 address
  (``::ffff:127.0.0.1``, 6to4, Teredo, NAT64).
- A host listed in WEBHOOK_ALLOWED_HOSTS, or an address inside a listed address or CIDR
  block, is exempt (a receiver inside the operator's own network).

The check runs when an endpoint is registered or its URL changed (a 422 naming ``url``)
and again before every attempt, which then connects to the addresses it checked, never
to a second resolution of the name (DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

import idna
from flask import current_app

MAX_URL = 2000
PORTS = {"http": 80, "https": 443}
# NAT64's well-known prefix: its addresses carry an IPv4 address in their last 32 bits.
NAT64 = ipaddress.ip_network("64:ff9b::/96")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class Refused(ValueError):
    """The URL cannot receive webhooks; the message says why (it names ``url``)."""


@dataclass(frozen=True)
class Destination:
    """A checked URL: where to connect (the checked addresses, in resolver order) and what
    to ask for there."""

    scheme: str
    host: str  # the name (or address) as sent in Host and, for https, SNI
    port: int
    target: str  # path and query
    addresses: tuple[str, ...]


def getaddrinfo(host: str, port: int) -> list[str]:
    """The addresses ``host`` resolves to (tests replace this: no network needed)."""
    found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in found))


def _embedded(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for, if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def kind_of(address: Address) -> str | None:
    """What kind of non-public address this is, or None when it is public."""
    embedded = _embedded(address)
    if embedded is not None:
        return kind_of(embedded)
    for kind, test in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if test:
            return kind
    return None if address.is_global else "non-public"


def _host_of(url: str, allow_http: bool) -> tuple[str, str, int, str]:
    if len(url) > MAX_URL:
        raise Refused(f"The url must be at most {MAX_URL} characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise Refused(f"The url is not a valid URL: {exc}.") from exc
    scheme = parts.scheme.lower()
    if scheme not in PORTS:
        raise Refused("The url must start with http:// or https://.")
    if scheme == "http" and not allow_http:
        raise Refused("The url must use https (WEBHOOK_ALLOW_HTTP is off).")
    if not parts.hostname:
        raise Refused("The url must name a host.")
    if parts.username is not None or parts.password is not None:
        raise Refused("The url must not hold a user name or password.")
    if parts.fragment:
        raise Refused("The url must not have a fragment (#...).")
    host = parts.hostname.rstrip(".")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            host = idna.encode(host, uts46=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as exc:
            raise Refused("The url's host is not a valid host name.") from exc
    target = parts.path or "/"
    if parts.query:
        target += f"?{parts.query}"
    return scheme, host, port or PORTS[scheme], target


def _allowed(config) -> tuple[set[str], list[ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    names, networks = set(), []
    for entry in config["WEBHOOK_ALLOWED_HOSTS"]:
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names.add(entry.lower().rstrip("."))
    return names, networks


def check(url: str) -> Destination:
    """The URL's destination, every address it resolves to checked; Refused otherwise."""
    config = current_app.config
    scheme, host, port, target = _host_of(url, config["WEBHOOK_ALLOW_HTTP"])
    names, networks = _allowed(config)
    try:
        addresses = getaddrinfo(host, port)
    except (OSError, UnicodeError) as exc:
        raise Refused(f"The url's host {host} does not resolve ({exc}).") from exc
    if not addresses:
        raise Refused(f"The url's host {host} does not resolve.")
    if host.lower() not in names:
        for text in addresses:
            address = ipaddress.ip_address(text.split("%", 1)[0])
            if any(address in network for network in networks):
                continue
            if (kind := kind_of(address)) is not None:
                raise Refused(
                    f"The url's host {host} resolves to {address}, a {kind} address: only "
                    "public addresses receive webhooks (WEBHOOK_ALLOWED_HOSTS lists exceptions)."
                )
    return Destination(scheme, host, port, target, tuple(addresses))
