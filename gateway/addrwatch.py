"""Local address and route changes, for MOBIKE (RFC 4555) the way strongSwan roams.

`AddressWatcher` listens to rtnetlink's address and route groups (IPv4 and IPv6) of the
daemon's network namespace with pyroute2's asyncio socket, so the daemon's event loop
never blocks on it, and calls `on_change()` after each burst of changes (an address
replaced on an interface is a DELADDR and a NEWADDR, plus route updates: the callback
comes once, `settle` seconds after the last of them). It also answers the two questions
a roaming decision needs: which addresses the host has now (`addresses()`) and which
source address the kernel would use towards a peer (`source_for()`, RTM_GETROUTE).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger("gateway.addrwatch")

_CHANGES = frozenset({"RTM_NEWADDR", "RTM_DELADDR", "RTM_NEWROUTE", "RTM_DELROUTE"})


class AddressWatcher:
    """rtnetlink address/route events -> `on_change()`; address and route lookups."""

    def __init__(self, on_change: Callable[[], None], *, settle: float = 0.1) -> None:
        self.on_change = on_change
        self.settle = settle
        self._events: Any = None  # AsyncIPRoute bound to the multicast groups
        self._queries: Any = None  # AsyncIPRoute for dumps and route lookups
        self._task: asyncio.Task[None] | None = None
        self._pending: asyncio.TimerHandle | None = None
        self.changes = 0

    async def start(self) -> None:
        from pyroute2 import AsyncIPRoute
        from pyroute2.netlink.rtnl import (
            RTMGRP_IPV4_IFADDR,
            RTMGRP_IPV4_ROUTE,
            RTMGRP_IPV6_IFADDR,
            RTMGRP_IPV6_ROUTE,
        )

        self._events = AsyncIPRoute()
        await self._events.bind(
            groups=RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
        )
        self._queries = AsyncIPRoute()
        self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            while True:
                async for msg in self._events.get():
                    if msg.get("event") in _CHANGES:
                        self._changed()
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            log.error("event=addrwatch-failed error=%s", exc.strerror or exc)

    def _changed(self) -> None:
        self.changes += 1
        if self._pending is not None:
            self._pending.cancel()
        self._pending = asyncio.get_running_loop().call_later(self.settle, self._fire)

    def _fire(self) -> None:
        self._pending = None
        self.on_change()

    async def addresses(self) -> set[str]:
        """The host's addresses now (all interfaces, v4 and v6; not tentative ones)."""
        out: set[str] = set()
        async for msg in await self._queries.addr("dump"):
            addr = msg.get("IFA_ADDRESS")
            if addr and not msg.get("flags", 0) & 0x40:  # IFA_F_TENTATIVE
                out.add(str(addr))
        return out

    async def source_for(self, remote: str) -> str | None:
        """The source address the kernel picks towards `remote`, None without a route."""
        from pyroute2.netlink.exceptions import NetlinkError

        try:
            routes = list(await self._queries.route("get", dst=remote))
        except (NetlinkError, OSError, ValueError) as exc:  # no route (ENETUNREACH...)
            log.debug("event=route-lookup-failed remote=%s error=%s", remote, exc)
            return None
        for msg in routes:
            src = msg.get("RTA_PREFSRC")
            if src:
                return str(src)
        return None

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._task is not None:
            self._task.cancel()
            self._task = None
        for sock in (self._events, self._queries):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        self._events = self._queries = None
