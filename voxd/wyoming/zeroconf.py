"""Zeroconf (mDNS / DNS-SD) advertisement of voxd's Wyoming server.

Home Assistant's Wyoming integration browses ``_wyoming._tcp.local.``; a
service found there shows up under Settings -> Devices & services as
"Discovered", and Home Assistant connects to the advertised address and port
and asks the server to describe itself.

Which addresses are advertised follows ``wyoming.host``: a specific address
is advertised alone, and the multicast traffic stays on that address's
interface (on 127.0.0.1 it never leaves the machine); the "any" addresses
(0.0.0.0, ::) advertise every non-loopback address of the machine on all
interfaces. The service records are published under the instance's own
name rather than ``<hostname>.local``, so they never compete with a host
name that Avahi already publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from typing import Any

import ifaddr
from zeroconf import InterfaceChoice, IPVersion
from zeroconf.asyncio import AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_wyoming._tcp.local."
INSTANCE_MAX_BYTES = 63  # DNS-SD instance names are one DNS label


def default_instance_name() -> str:
    """``voxd-<hostname>``: readable in Home Assistant, unique per machine."""
    host = socket.gethostname().split(".")[0] or "host"
    return f"voxd-{host}".encode()[:INSTANCE_MAX_BYTES].decode("utf-8", "ignore")


def _machine_addresses(version: int) -> list[str]:
    """Every non-loopback, non-link-local address of this machine of one IP version."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            addr = ipaddress.ip_address(text)
            if addr.version == version and not (addr.is_loopback or addr.is_link_local):
                found.append(str(addr))
    return found


def _resolve(host: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:  # a host name: the addresses it resolves to here
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
        return [ipaddress.ip_address(str(info[4][0])) for info in infos]


def plan(host: str) -> tuple[list[str], list[str] | InterfaceChoice, IPVersion]:
    """The addresses to advertise for a server listening on ``host``, and where to send."""
    if host in ("", "0.0.0.0", "::"):
        if host == "::":
            return _machine_addresses(4) + _machine_addresses(6), InterfaceChoice.All, IPVersion.All
        return _machine_addresses(4), InterfaceChoice.All, IPVersion.V4Only
    addrs = list(dict.fromkeys(str(a) for a in _resolve(host)))
    versions = {ipaddress.ip_address(a).version for a in addrs}
    if versions == {4}:
        return addrs, list(addrs), IPVersion.V4Only
    if versions == {6}:
        return addrs, list(addrs), IPVersion.V6Only
    return addrs, list(addrs), IPVersion.All


class Advertisement:
    """Publishes one ``_wyoming._tcp`` service while the server runs (asyncio)."""

    def __init__(self, name: str, host: str, port: int) -> None:
        self.name = name
        self.host = host
        self.port = port
        self._zc: AsyncZeroconf | None = None
        self._info: AsyncServiceInfo | None = None
        self._announcing: asyncio.Future[Any] | None = None  # the registration's announcements

    async def start(self) -> None:
        """Register the service; raises OSError/zeroconf errors if that is impossible."""
        addresses, interfaces, version = plan(self.host)
        if not addresses:
            raise OSError(f"no network address to advertise for host {self.host!r}")
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=version)
        self._info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{self.name}.{SERVICE_TYPE}",
            port=self.port,
            parsed_addresses=addresses,
        )
        # Another device with the same name: zeroconf picks "name (2)" rather than fail.
        # The announcements go on in the background, about a second apart.
        self._announcing = asyncio.ensure_future(
            await self._zc.async_register_service(self._info, allow_name_change=True)
        )
        log.info(
            "zeroconf: advertising %r as %s on %s port %d",
            self._info.name.removesuffix("." + SERVICE_TYPE),
            SERVICE_TYPE,
            ", ".join(addresses),
            self.port,
        )

    async def stop(self) -> None:
        """Withdraw the service (a goodbye packet) and close the sockets."""
        announcing, self._announcing = self._announcing, None
        if announcing is not None and not announcing.done():
            # stopped before they were all sent: left pending, the task would be
            # destroyed with the loop ("Task was destroyed but it is pending")
            announcing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await announcing
        zc, self._zc = self._zc, None
        if zc is not None:
            await zc.async_close()
