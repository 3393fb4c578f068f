"""Two engines in memory with a fake clock: deliver, drop, duplicate, NAT-rewrite."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field

from ike.config import ChildConfig, ConnectionConfig, EngineSettings
from ike.engine import IkeEngine, RandomSpis
from ike.events import Datagram, Endpoint, Event
from ike.sa import IkeSa

A_IP, B_IP, NAT_IP = "192.0.2.1", "192.0.2.2", "198.51.100.7"
PSK = b"correct horse battery staple"


def conn(
    name: str,
    local: str,
    remote: str,
    *,
    ike: tuple[str, ...] = ("aes256gcm16-prfsha384-x25519",),
    esp: tuple[str, ...] = ("aes256gcm16",),
    local_ts: tuple[str, ...] = ("10.1.0.0/16",),
    remote_ts: tuple[str, ...] = ("10.2.0.0/16",),
    mode: str = "tunnel",
    psk: bytes = PSK,
    local_id: str = "",
    remote_id: str = "",
) -> ConnectionConfig:
    return ConnectionConfig(
        name=name,
        local_addrs=(local,),
        remote_addrs=(remote,),
        local_id=local_id,
        remote_id=remote_id,
        psk=psk,
        ike_proposals=ike,
        children=(ChildConfig("net", local_ts, remote_ts, esp, mode),),
    )


def pair_confs(**kw: object) -> tuple[ConnectionConfig, ConnectionConfig]:
    """Matching configs for a (192.0.2.1, 10.1/16) and b (192.0.2.2, 10.2/16)."""
    a_kw = {k[2:]: v for k, v in kw.items() if k.startswith("a_")}
    b_kw = {k[2:]: v for k, v in kw.items() if k.startswith("b_")}
    both = {k: v for k, v in kw.items() if not k.startswith(("a_", "b_"))}
    a = conn("a2b", A_IP, B_IP, **{**both, **a_kw})  # type: ignore[arg-type]
    b_defaults = {"local_ts": ("10.2.0.0/16",), "remote_ts": ("10.1.0.0/16",)}
    b = conn("b2a", B_IP, A_IP, **{**b_defaults, **both, **b_kw})  # type: ignore[arg-type]
    return a, b


Filter = Callable[[int, Datagram], int]  # (index, datagram) -> copies to deliver (0 = drop)


class SeededRandom:
    """The engines' injected random source: seeded, and able to record what it hands
    out in `size`-byte pieces (the nonces) into `taken` while that is a list."""

    def __init__(self, seed: int, size: int = 32) -> None:
        self._random = random.Random(seed)
        self.size = size
        self.taken: list[bytes] | None = None

    def __call__(self, n: int) -> bytes:
        out = self._random.randbytes(n)
        if self.taken is not None and n == self.size:
            self.taken.append(out)
        return out


@dataclass
class Net:
    a: IkeEngine
    b: IkeEngine
    now: float = 1000.0
    nat: bool = False  # a sits behind a NAT that maps its address/port to NAT_IP
    log: list[tuple[str, Datagram]] = field(default_factory=list)
    events: dict[str, list[Event]] = field(default_factory=lambda: {"a": [], "b": []})
    randoms: dict[str, SeededRandom] = field(default_factory=dict)
    spis: dict[str, RandomSpis] = field(default_factory=dict)  # the injected allocators

    @classmethod
    def make(
        cls,
        a_conf: ConnectionConfig,
        b_conf: ConnectionConfig,
        a_settings: EngineSettings | None = None,
        b_settings: EngineSettings | None = None,
        seed: int = 1,
        a_spis: RandomSpis | None = None,
        b_spis: RandomSpis | None = None,
        **kw: object,
    ) -> Net:
        ra, rb = SeededRandom(seed), SeededRandom(seed + 1000)
        sa = a_spis if a_spis is not None else RandomSpis(ra)
        sb = b_spis if b_spis is not None else RandomSpis(rb)
        a = IkeEngine([a_conf], a_settings, random=ra, spis=sa)
        b = IkeEngine([b_conf], b_settings, random=rb, spis=sb)
        return cls(a, b, randoms={"a": ra, "b": rb}, spis={"a": sa, "b": sb}, **kw)  # type: ignore[arg-type]

    def _nat_out(self, ep: Endpoint) -> Endpoint:
        return (NAT_IP, ep[1] + 10000) if self.nat and ep[0] == A_IP else ep

    def _nat_in(self, ep: Endpoint) -> Endpoint:
        return (A_IP, ep[1] - 10000) if self.nat and ep[0] == NAT_IP else ep

    def pump(self, filt: Filter | None = None, limit: int = 200) -> int:
        """Deliver until quiet; returns the number of datagrams seen."""
        n = 0
        while n < limit:
            batch = [("a", d) for d in self.a.datagrams_to_send()]
            batch += [("b", d) for d in self.b.datagrams_to_send()]
            if not batch:
                break
            for src, d in batch:
                self.log.append((src, d))
                copies = filt(n, d) if filt else 1
                n += 1
                dst = self.b if src == "a" else self.a
                for _ in range(copies):
                    if src == "a":
                        dst.receive_datagram(d.data, (d.remote, self._nat_out(d.local)), self.now)
                    else:
                        dst.receive_datagram(d.data, (self._nat_in(d.remote), d.local), self.now)
        self.collect()
        return n

    def collect(self) -> None:
        for name, eng in (("a", self.a), ("b", self.b)):
            while (ev := eng.next_event()) is not None:
                self.events[name].append(ev)

    def fire_timers(self, end: float) -> bool:
        """Move the clock to the next timer of either engine and fire it, if that is not
        after `end`; False when there is none."""
        due = [t for t in (self.a.next_timer(), self.b.next_timer()) if t is not None]
        if not due or min(due) > end:
            return False
        self.now = max(self.now, min(due))
        self.a.handle_timer(self.now)
        self.b.handle_timer(self.now)
        return True

    def advance(self, seconds: float, filt: Filter | None = None) -> None:
        """Run the clock forward, firing timers and delivering what they send."""
        end = self.now + seconds
        while self.fire_timers(end):
            self.pump(filt)
        self.now = end
        self.collect()

    def of(self, side: str, cls: type) -> list:  # type: ignore[type-arg]
        return [e for e in self.events[side] if isinstance(e, cls)]


# --------------------------------------------------------------------------- inside looks
# The engine's API shows the current IKE SAs only (ike_sas()). Tests that forge authentic
# messages with an SA's keys, send a request of their own on an SA (the engine's host
# interface, ike/host.py, takes the IkeSa), count lingering SAs or check the engine's
# tables for leaks look inside through these helpers, and only here.


def all_sas(eng: IkeEngine) -> list[IkeSa]:
    """Every IKE SA the engine holds, also the rekeyed, redundant and lingering ones."""
    return list(eng._by_uid.values())  # noqa: SLF001


def sa_of(eng: IkeEngine, handle: int | None = None) -> IkeSa:
    """The IKE SA with this handle, or the engine's one current IKE SA."""
    if handle is not None:
        return eng._by_uid[handle]  # noqa: SLF001
    [sa] = [s for s in all_sas(eng) if s.current]
    return sa


def any_sa(eng: IkeEngine) -> IkeSa:
    """The engine's first IKE SA, established or not (a handshake under way)."""
    return all_sas(eng)[0]


def sa_table(eng: IkeEngine) -> dict[bytes, IkeSa]:
    """The engine's IKE SAs by our SPI (every SA there is also in all_sas: no leaks)."""
    return dict(eng._sas)  # noqa: SLF001


def leftovers(eng: IkeEngine, spis: RandomSpis) -> list[str]:
    """What the engine still holds: SAs, entries of its SA tables, inbound SPIs, timers."""
    out = [f"IKE SA {sa!r}" for sa in all_sas(eng)]
    out += [f"table entry {spi.hex()}" for spi in eng._sas]  # noqa: SLF001
    out += [f"IKE_SA_INIT entry {spi.hex()}" for spi in eng._by_spi_i]  # noqa: SLF001
    out += [f"inbound SPI {spi:08x}" for spi in spis._used]  # noqa: SLF001
    if eng.next_timer() is not None:
        out.append(f"a timer at {eng.next_timer()}")
    return out
