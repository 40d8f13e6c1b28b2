"""Where a webhook may go: no server-side request forgery.

A webhook URL is the client's, and the server calls it from inside its network: a URL naming (or
resolving to) a loopback, private, link-local (cloud metadata at 169.254.169.254 among them), shared
(100.64/10), multicast, reserved or unspecified address would let a client reach what only the
server can. Every address a URL's host resolves to must be public (``ipaddress``'s ``is_global``;
an IPv6 address that embeds an IPv4 one, mapped, NAT64 or 6to4, is judged as that IPv4 address, and
NAT64 local-use and Teredo addresses are refused), unless ``T2I_WEBHOOK_ALLOW`` lists it. The check
runs at submit (a 400 naming the URL and the address) and again at each delivery, which then
connects to the address it checked (the URL's host, in its IDNA form, goes in the Host header and,
for https, the TLS server name), so a DNS answer that changes between the two (rebinding) cannot redirect it.
Redirects are never followed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from typing import Sequence
from urllib.parse import urlsplit

import idna

from t2i_core.common.errors import InvalidRequest

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL = 2048


class AddressRefused(InvalidRequest):
    code = "webhook_address_refused"


@dataclass(frozen=True)
class Target:
    """A webhook URL checked: where to connect (``address``) and what to say (host, TLS name)."""

    url: str
    scheme: str
    host: str
    port: int
    #: the path and query sent
    target: str
    address: str

    def connect_url(self) -> str:
        """The URL with the checked address in place of the host (the Host header keeps the name)."""
        literal = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{literal}:{self.port}{self.target}"

    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        name = f"[{self.host}]" if ":" in self.host else self.host
        return name if self.port == default else f"{name}:{self.port}"


def parse_url(url: object, param: str = "webhook") -> tuple[str, str, int, str]:
    """(scheme, host, port, path and query) of an http(s) URL; InvalidRequest naming ``param`` otherwise."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL:
        raise InvalidRequest(f"{param} must be an http:// or https:// URL of at most {MAX_URL} characters; got "
                             f"{url if not isinstance(url, str) else url[:100]!r}", param=param)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    if parts.scheme not in ("http", "https") or not parts.hostname or port == -1 or parts.username or parts.password:
        raise InvalidRequest(f"{param} must be an http:// or https:// URL with a host (and no user or password); "
                             f"got {url[:200]!r}", param=param)
    port = port or (443 if parts.scheme == "https" else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, ascii_host(parts.hostname, url, param), port, target


def ascii_host(host: str, url: str, param: str) -> str:
    """``host`` as it goes on the wire (DNS, the Host header, the TLS server name): an internationalized
    name in its IDNA (``xn--``) form; InvalidRequest naming ``param`` when it has none."""
    if host.isascii():
        return host
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise InvalidRequest(f"{param} {url[:200]!r}: its host {host[:100]!r} is not a valid internationalized "
                             f"domain name ({exc})", param=param) from None


#: IPv6 prefixes whose last 32 bits are an IPv4 address the packets reach: judged as that IPv4 address
#: (IPv4-mapped, IPv4-translated, IPv4-compatible, NAT64's well-known prefix)
EMBEDDING_LAST_32 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96", "::/96",
                                                            "64:ff9b::/96"))
#: IPv6 prefixes that reach IPv4 through a translator or tunnel whose IPv4 address cannot be judged here
#: (local-use NAT64 places it anywhere; Teredo's client is obfuscated behind a relay): refused unless
#: T2I_WEBHOOK_ALLOW lists them
TUNNELLED = tuple(ipaddress.IPv6Network(n) for n in ("64:ff9b:1::/48", "2001::/32"))


def embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, translated, compatible, NAT64, 6to4), else None."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.sixtofour is not None:
        return address.sixtofour
    if any(address in net for net in EMBEDDING_LAST_32):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: Address) -> bool:
    """Whether packets to ``address`` reach a public host: an IPv6 address that embeds an IPv4 one is
    judged as that IPv4 address; a tunnelled one (``TUNNELLED``) never is."""
    inner = embedded_ipv4(address)
    if inner is not None:
        return is_public(inner)
    if isinstance(address, ipaddress.IPv6Address) and any(address in net for net in TUNNELLED):
        return False
    return address.is_global and not address.is_multicast


def allowed(address: Address, allow: Sequence[Network]) -> bool:
    """Public, or listed in ``allow`` (itself, or the IPv4 address it embeds)."""
    listed = [address] + [inner for inner in (embedded_ipv4(address),) if inner is not None]
    return is_public(address) or any(a.version == net.version and a in net for a in listed for net in allow)


async def resolve(host: str, port: int) -> list[Address]:
    """Every address ``host`` resolves to now (a literal address is itself)."""
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise InvalidRequest(f"webhook host {host!r} does not resolve: {exc}", param="webhook",
                             code="webhook_unresolvable") from None
    return list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos))


async def check_webhook_url(url: object, allow: Sequence[Network], param: str = "webhook") -> Target:
    """``url`` checked now: a Target to connect to, or InvalidRequest / AddressRefused naming the URL and
    the address that is not public and not allowed (``T2I_WEBHOOK_ALLOW``)."""
    scheme, host, port, target = parse_url(url, param)
    addresses = await resolve(host, port)
    refused = [a for a in addresses if not allowed(a, allow)]
    if refused or not addresses:
        shown = str(refused[0]) if refused else "no address"
        raise AddressRefused(
            f"{param} {str(url)[:200]!r} resolves to {shown}, which is loopback, private, link-local or otherwise not "
            f"public: webhooks go to public addresses only (T2I_WEBHOOK_ALLOW lists exceptions)", param=param)
    return Target(str(url), scheme, host, port, target, str(addresses[0]))
