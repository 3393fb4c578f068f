"""Virtual IPs for remote-access peers (RFC 7296 §2.19): the feature manager that owns the
address pools (`[pools.NAME]`, gateway/pools.py) and is the engine's AddressAssigner.

    engine asks (IKE_AUTH)   assign(): an address per family asked for, from the
                             connection's `pools` in order (or RADIUS's Framed-IP-Address
                             for the pool "radius"), leased to the EAP (else IKE)
                             identity and held by the IKE SA's handle; its pool's DNS
    IkeSaDeleted/IkeSaFailed the IKE SA's addresses released (the lease stays with its
                             identity, offline, until another needs the address)

With `[gateway] workers = N` each worker hands out only its share of every pool (offset
mod N = its index, the split of the inbound SPIs), so no address is handed out twice
without the workers talking to each other; the supervisor sums the shares' counts.
A reload keeps the leases of addresses that are still in a pool of the same name.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping
from typing import Any

from gateway.config.schema import RADIUS_POOL, GatewayConfig, PoolSection
from gateway.daemon.feature import EventContext, Feature, Host
from gateway.pools import AddressPools, IPAddress
from ike import events as ev
from ike.cp import VirtualIpAssignment, VirtualIpRequest

IP6_HOST_PREFIX = 128


class VirtualIps(Feature):
    """The address pools and who holds what (the engine's AddressAssigner hook)."""

    def __init__(
        self, daemon: Host, pools: tuple[PoolSection, ...], share: tuple[int, int]
    ) -> None:
        self.d = daemon
        self.share = share
        self.pools = AddressPools({p.name: p.addrs for p in pools}, share=share)
        self._dns = {p.name: tuple(ipaddress.ip_address(a) for a in p.dns) for p in pools}
        self._sections = pools
        # addresses RADIUS named (they are in no pool of ours): IKE SA -> address
        self._radius: dict[int, list[IPAddress]] = {}

    # ------------------------------------------------------------------ the engine's hook

    def assign(
        self,
        ike_sa: int,
        connection: str,
        pools: tuple[str, ...],
        identity: str,
        request: VirtualIpRequest,
        offered: VirtualIpAssignment | None,
    ) -> VirtualIpAssignment:
        got: dict[int, IPAddress] = {}
        dns: list[IPAddress] = []
        ours = [p for p in pools if p != RADIUS_POOL and p in self.pools.pools]
        for version, wanted, requested in (
            (4, request.ip4, request.requested_ip4),
            (6, request.ip6, request.requested_ip6),
        ):
            if not wanted:
                continue
            named = _offered(offered, version) if RADIUS_POOL in pools else None
            if named is not None:
                got[version] = named
                self._radius.setdefault(ike_sa, []).append(named)
                dns += offered.dns if offered is not None else ()
                continue
            leased = self.pools.acquire(ours, version, identity, ike_sa, requested)
            if leased is not None:
                name, address = leased
                got[version] = address
                dns += self._dns.get(name, ())
        ip6 = got.get(6)
        assignment = VirtualIpAssignment(
            got.get(4),  # type: ignore[arg-type]
            ipaddress.IPv6Interface((ip6, IP6_HOST_PREFIX)) if ip6 is not None else None,
            tuple(dict.fromkeys(dns)),
        )
        if not got:
            self.d.report(
                "vip-exhausted",
                logging.WARNING,
                connection=connection,
                ike_sa=ike_sa,
                identity=repr(identity),
                pools=",".join(pools),
            )
        return assignment

    # ------------------------------------------------------------------ engine events

    def on_event(self, event: Any, ctx: EventContext) -> None:
        match event:
            case ev.IkeSaDeleted() | ev.IkeSaFailed():
                released = self.pools.release(event.ike_sa)
                released += [(RADIUS_POOL, a) for a in self._radius.pop(event.ike_sa, ())]
                for pool, address in released:
                    self.d.report(
                        "vip-released",
                        connection=event.connection,
                        ike_sa=event.ike_sa,
                        pool=pool,
                        address=str(address),
                    )
        return None

    def stats(self) -> Mapping[str, Any]:
        """`pools`: addresses per pool and state (online, offline, free): this process's
        share; the supervisor of several workers sums them."""
        return {"pools": self.pools.counts()}

    def leases(self) -> list[dict[str, Any]]:
        """Every lease of this process: pool, address, identity, online/offline."""
        return [
            {"pool": name, "address": str(x.address), "identity": x.identity, "state": x.state}
            for name, pool in self.pools.pools.items()
            for x in pool.leases()
        ]

    def reloaded(self, config: GatewayConfig) -> None:
        """New pool definitions: unchanged pools keep their object (and leases); a changed
        pool keeps the leases whose addresses it still holds; a removed pool's addresses
        stay with their IKE SAs until they end, but are no longer counted."""
        pools = config.pools
        if pools == self._sections:
            return
        old = {p.name: p for p in self._sections}
        fresh = AddressPools({p.name: p.addrs for p in pools}, share=self.share)
        for p in pools:
            before = self.pools.pools.get(p.name)
            if before is None:
                continue
            if old[p.name].addrs == p.addrs:
                fresh.pools[p.name] = before
                continue
            pool = fresh.pools[p.name]
            for holder, lease in before.held():
                if lease.address in pool:
                    pool.acquire(lease.identity, holder, lease.address)
        self.pools = fresh
        self._dns = {p.name: tuple(ipaddress.ip_address(a) for a in p.dns) for p in pools}
        self._sections = pools


def _offered(offered: VirtualIpAssignment | None, version: int) -> IPAddress | None:
    if offered is None:
        return None
    if version == 4:
        return offered.ip4
    return offered.ip6.ip if offered.ip6 is not None else None
