"""Virtual-IP address pools (swanctl.conf `pools { NAME { addrs = ... } }`), pure logic:
no I/O, no clock. The daemon owns one `AddressPools` per process (gateway/daemon/vips.py)
and asks it for an address when a client's CFG_REQUEST arrives in IKE_AUTH.

`addrs` is a CIDR subnet (the network address, and for IPv4 the broadcast address, are
left out, as strongSwan does; a /31, /32, /127 or /128 is used whole), a range
`FIRST-LAST` (both included) or one address.

Leases follow strongSwan's in-memory pools: an address is *online* while at least one
holder (an IKE SA) uses it, *offline* once the last holder released it (the lease is kept
for its identity), *free* when never handed out. An identity that comes back gets its
offline address again; a client that asks for a specific address (a CFG_REQUEST with a
value, e.g. when it reauthenticates make-before-break) gets it if it is free or already
its own, even while its old IKE SA still holds it. Fresh addresses are taken in order;
when none is left the least recently released offline lease of another identity is
reassigned; after that the pool is exhausted.

Workers (`[gateway] workers = N`): every worker process has its own `AddressPools` with
`share=(k, N)` and only ever hands out the addresses of its share (offset mod N == k in
each pool), so two workers can never hand out one address twice, without talking to each
other (the same split as the inbound SPIs, docs/daemon.md).
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
STATES = ("online", "offline", "free")


def _syntax(text: str) -> ValueError:
    return ValueError(
        f"{text!r} is not a subnet (10.3.0.0/24), a range (10.3.0.10-10.3.0.99) or an address"
    )


def _address(part: str, text: str) -> IPAddress:
    try:
        return ipaddress.ip_address(part.strip())
    except ValueError:
        raise _syntax(text) from None


def parse_addrs(text: str) -> tuple[IPAddress, IPAddress]:
    """The first and last address of a pool's `addrs`; ValueError with a message for the
    config error otherwise."""
    text = text.strip()
    if "-" in text:
        first_text, _, last_text = text.partition("-")
        first, last = _address(first_text, text), _address(last_text, text)
        if first.version != last.version:
            raise ValueError(f"{text!r} mixes IPv4 and IPv6")
        if int(last) < int(first):
            raise ValueError(f"{text!r} ends before it starts")
        return first, last
    if "/" not in text:
        addr = _address(text, text)
        return addr, addr
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise _syntax(text) from None
    first, last = net.network_address, net.broadcast_address
    if net.max_prefixlen - net.prefixlen >= 2:  # leave out network (and IPv4 broadcast)
        first = first + 1
        if net.version == 4:
            last = last - 1
    return first, last


@dataclass(slots=True)
class _Lease:
    identity: str
    holders: set[Hashable] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class Lease:
    address: IPAddress
    identity: str
    state: str  # "online" or "offline"


class AddressPool:
    """One pool, or (with `share=(k, n)`) the k-th of n interleaved shares of it."""

    def __init__(self, name: str, addrs: str, *, share: tuple[int, int] = (0, 1)) -> None:
        k, n = share
        if n < 1 or not 0 <= k < n:
            raise ValueError(f"pool {name}: share {k} of {n}")
        self.name = name
        self.addrs = addrs
        self.first, self.last = parse_addrs(addrs)
        self.version = self.first.version
        self._base = int(self.first)
        whole = int(self.last) - self._base + 1
        self._k, self._n = k, n
        self.size = max(0, (whole - k + n - 1) // n)  # addresses in our share
        self._next = 0  # index (in our share) of the next never-used address
        self._leases: dict[int, _Lease] = {}
        self._offline: OrderedDict[int, None] = OrderedDict()  # oldest release first
        self._by_identity: dict[str, set[int]] = {}
        self._by_holder: dict[Hashable, int] = {}

    def __repr__(self) -> str:
        return f"AddressPool({self.name!r}, {self.addrs!r}, share={self._k}/{self._n})"

    # ----------------------------------------------------------------- addressing

    def _index(self, address: IPAddress) -> int | None:
        """Our share's index of `address`, or None when it is not ours."""
        if address.version != self.version:
            return None
        offset = int(address) - self._base
        if offset < 0 or offset % self._n != self._k:
            return None
        index = offset // self._n
        return index if index < self.size else None

    def _address(self, index: int) -> IPAddress:
        return ipaddress.ip_address(self._base + self._k + index * self._n)

    def __contains__(self, address: object) -> bool:
        return isinstance(address, IPAddress) and self._index(address) is not None

    # ----------------------------------------------------------------- leases

    def acquire(
        self, identity: str, holder: Hashable, requested: IPAddress | None = None
    ) -> IPAddress | None:
        """An address for `holder` (e.g. an IKE SA) of `identity`; None when the pool is
        exhausted. A holder has at most one address per pool: asking again gives it the
        same one."""
        if holder in self._by_holder:
            return self._address(self._by_holder[holder])
        index = self._pick(identity, requested)
        if index is None:
            return None
        lease = self._leases.get(index)
        if lease is None or lease.identity != identity:
            if lease is not None:  # reassigning another identity's offline lease
                self._by_identity[lease.identity].discard(index)
            lease = self._leases[index] = _Lease(identity)
            self._by_identity.setdefault(identity, set()).add(index)
        self._offline.pop(index, None)
        lease.holders.add(holder)
        self._by_holder[holder] = index
        return self._address(index)

    def _pick(self, identity: str, requested: IPAddress | None) -> int | None:
        if requested is not None:
            index = self._index(requested)
            if index is not None:
                lease = self._leases.get(index)
                if lease is None or lease.identity == identity:
                    return index
        for index in self._by_identity.get(identity, ()):
            if index in self._offline:
                return index
        while self._next < self.size:
            index = self._next
            self._next += 1
            if index not in self._leases:
                return index
        for index in self._offline:  # the least recently released
            return index
        return None

    def release(self, holder: Hashable) -> IPAddress | None:
        """The holder is gone (IKE SA deleted); its address, if it had one here."""
        index = self._by_holder.pop(holder, None)
        if index is None:
            return None
        lease = self._leases[index]
        lease.holders.discard(holder)
        if not lease.holders:
            self._offline[index] = None
            self._offline.move_to_end(index)
        return self._address(index)

    def held(self) -> list[tuple[Hashable, Lease]]:
        """(holder, its lease) of every address held now (a reload carries them over)."""
        return [
            (holder, Lease(self._address(i), self._leases[i].identity, "online"))
            for holder, i in self._by_holder.items()
        ]

    def address_of(self, holder: Hashable) -> IPAddress | None:
        index = self._by_holder.get(holder)
        return None if index is None else self._address(index)

    def counts(self) -> dict[str, int]:
        """Addresses per state, for `ipsec_pool_addresses{pool,state}`."""
        offline = len(self._offline)
        online = len(self._leases) - offline
        return {"online": online, "offline": offline, "free": self.size - online - offline}

    def leases(self) -> list[Lease]:
        return [
            Lease(
                self._address(i),
                lease.identity,
                "offline" if i in self._offline else "online",
            )
            for i, lease in sorted(self._leases.items())
        ]


class AddressPools:
    """The named pools of a configuration (no two may overlap, as in swanctl), and which
    holder got what from which."""

    def __init__(self, addrs: Mapping[str, str], *, share: tuple[int, int] = (0, 1)) -> None:
        self.pools = {name: AddressPool(name, text, share=share) for name, text in addrs.items()}
        check_disjoint(self.pools.values())

    def acquire(
        self,
        names: Sequence[str],
        version: int,
        identity: str,
        holder: Hashable,
        requested: IPAddress | None = None,
    ) -> tuple[str, IPAddress] | None:
        """An address of IP `version` from the first of `names` (a connection's `pools`,
        in order) that has one; None when none has."""
        for name in names:
            pool = self.pools[name]
            if pool.version != version:
                continue
            want = requested if requested is not None and requested in pool else None
            address = pool.acquire(identity, holder, want)
            if address is not None:
                return name, address
        return None

    def release(self, holder: Hashable) -> list[tuple[str, IPAddress]]:
        out = []
        for name, pool in self.pools.items():
            address = pool.release(holder)
            if address is not None:
                out.append((name, address))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        return {name: pool.counts() for name, pool in self.pools.items()}


def check_disjoint(pools: Iterable[AddressPool]) -> None:
    """ValueError naming two pools whose ranges overlap."""
    spans = sorted(
        ((p.version, int(p.first), int(p.last), p.name) for p in pools), key=lambda s: s[:2]
    )
    for (v1, _, last1, name1), (v2, first2, _, name2) in itertools.pairwise(spans):
        if v1 == v2 and first2 <= last1:
            raise ValueError(f"pools {name1} and {name2} overlap")
