"""Address pools (gateway/pools.py): swanctl `addrs` syntax, lease rules (online, offline
per identity, requested addresses, least-recently-released reassignment), counts per
state, worker shares that never hand out one address twice, and random operation
sequences against the invariants."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.pools import AddressPool, AddressPools, parse_addrs

V4 = ipaddress.IPv4Address
V6 = ipaddress.IPv6Address


@pytest.mark.parametrize(
    ("text", "first", "last"),
    [
        ("10.3.0.0/24", "10.3.0.1", "10.3.0.254"),  # network and broadcast left out
        ("10.3.0.9/24", "10.3.0.1", "10.3.0.254"),  # host bits ignored, as swanctl does
        ("10.3.0.0/30", "10.3.0.1", "10.3.0.2"),
        ("10.3.0.0/31", "10.3.0.0", "10.3.0.1"),
        ("10.3.0.7/32", "10.3.0.7", "10.3.0.7"),
        ("10.3.0.10-10.3.0.20", "10.3.0.10", "10.3.0.20"),
        (" 10.3.0.10 - 10.3.0.10 ", "10.3.0.10", "10.3.0.10"),
        ("10.3.0.5", "10.3.0.5", "10.3.0.5"),
        ("fd00:3::/120", "fd00:3::1", "fd00:3::ff"),  # IPv6: only the network address out
        ("fd00:3::/127", "fd00:3::", "fd00:3::1"),
        ("fd00:3::10-fd00:3::1f", "fd00:3::10", "fd00:3::1f"),
    ],
)
def test_addrs_syntax(text: str, first: str, last: str) -> None:
    assert parse_addrs(text) == (ipaddress.ip_address(first), ipaddress.ip_address(last))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("10.3.0.20-10.3.0.10", "ends before it starts"),
        ("10.3.0.1-fd00::1", "mixes IPv4 and IPv6"),
        ("10.3.0.0/33", "is not a subnet"),
        ("pool-a", "is not a subnet"),
        ("", "is not a subnet"),
    ],
)
def test_addrs_errors(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_addrs(text)


def test_fresh_addresses_in_order_then_exhausted() -> None:
    pool = AddressPool("p", "10.3.0.0/29")  # .1 - .6
    got = [pool.acquire(f"user{i}", i) for i in range(6)]
    assert got == [V4(f"10.3.0.{i}") for i in range(1, 7)]
    assert pool.acquire("late", 99) is None
    assert pool.counts() == {"online": 6, "offline": 0, "free": 0}


def test_an_identity_gets_its_address_back_after_release() -> None:
    pool = AddressPool("p", "10.3.0.0/24")
    a = pool.acquire("alice", "sa1")
    b = pool.acquire("bob", "sa2")
    assert pool.release("sa1") == a and pool.release("sa1") is None
    assert pool.counts() == {"online": 1, "offline": 1, "free": 252}
    assert pool.acquire("carol", "sa3") not in (a, b)  # alice's lease is kept for alice
    assert pool.acquire("alice", "sa4") == a
    assert pool.address_of("sa4") == a and pool.address_of("sa1") is None
    assert [(str(x.address), x.identity, x.state) for x in pool.leases()] == [
        ("10.3.0.1", "alice", "online"),
        ("10.3.0.2", "bob", "online"),
        ("10.3.0.3", "carol", "online"),
    ]


def test_offline_leases_are_reassigned_least_recently_released_first() -> None:
    pool = AddressPool("p", "10.3.0.1-10.3.0.3")
    for i, who in enumerate(("a", "b", "c")):
        pool.acquire(who, i)
    pool.release(1)  # b's 10.3.0.2 goes offline first
    pool.release(0)  # then a's 10.3.0.1
    assert pool.acquire("d", 10) == V4("10.3.0.2")
    assert pool.acquire("e", 11) == V4("10.3.0.1")
    assert pool.acquire("f", 12) is None
    assert pool.acquire("a", 13) is None  # a's lease went to e
    assert pool.counts() == {"online": 3, "offline": 0, "free": 0}


def test_requested_address() -> None:
    pool = AddressPool("p", "10.3.0.0/24")
    assert pool.acquire("alice", "sa1", V4("10.3.0.77")) == V4("10.3.0.77")  # free: granted
    # someone else's (online) address is not handed over
    assert pool.acquire("bob", "sa2", V4("10.3.0.77")) == V4("10.3.0.1")
    # outside the pool: ignored
    assert pool.acquire("carol", "sa3", V4("192.0.2.1")) == V4("10.3.0.2")
    # the cursor skips addresses handed out on request
    for i in range(3, 77):
        pool.acquire(f"u{i}", f"x{i}")
    assert pool.acquire("dave", "sa4") == V4("10.3.0.78")


def test_reauthentication_shares_the_address_make_before_break() -> None:
    """The new IKE SA asks for the address the old one holds: both hold it until the
    old one is deleted; it never goes offline on the way."""
    pool = AddressPool("p", "10.3.0.0/24")
    old = pool.acquire("alice", "old-sa")
    assert pool.acquire("alice", "new-sa", old) == old
    assert pool.counts()["online"] == 1
    pool.release("old-sa")
    assert pool.counts() == {"online": 1, "offline": 0, "free": 253}
    pool.release("new-sa")
    assert pool.counts() == {"online": 0, "offline": 1, "free": 253}


def test_a_holder_has_one_address_per_pool() -> None:
    pool = AddressPool("p", "10.3.0.0/24")
    assert pool.acquire("alice", "sa1") == pool.acquire("alice", "sa1", V4("10.3.0.99"))
    assert pool.counts()["online"] == 1


def test_worker_shares_partition_the_pool() -> None:
    shares = [AddressPool("p", "10.3.0.0/24", share=(k, 3)) for k in range(3)]
    assert sum(s.size for s in shares) == 254
    handed: list[object] = []
    for k, share in enumerate(shares):
        while (a := share.acquire(f"w{k}-{len(handed)}", len(handed))) is not None:
            handed.append(a)
    assert len(handed) == 254 and len(set(handed)) == 254
    assert V4("10.3.0.1") in shares[0] and V4("10.3.0.1") not in shares[1]
    # a share ignores a requested address of another share
    assert shares[1].acquire("x", "new", V4("10.3.0.1")) != V4("10.3.0.1")
    with pytest.raises(ValueError, match="share 3 of 3"):
        AddressPool("p", "10.3.0.0/24", share=(3, 3))


def test_hundred_clients_at_once_get_distinct_addresses() -> None:
    pools = AddressPools({"rw": "10.3.0.0/24", "rw6": "fd00:3::/64"})
    got = [pools.acquire(["rw", "rw6"], 4, f"client{i}", f"sa{i}") for i in range(100)]
    got6 = [pools.acquire(["rw", "rw6"], 6, f"client{i}", f"sa{i}") for i in range(100)]
    assert all(g is not None for g in got + got6)
    assert len({g[1] for g in got if g}) == 100 and {g[0] for g in got if g} == {"rw"}
    assert len({g[1] for g in got6 if g}) == 100
    assert pools.counts()["rw"] == {"online": 100, "offline": 0, "free": 154}
    assert pools.counts()["rw6"]["free"] == 2**64 - 1 - 100
    assert pools.release("sa7") == [("rw", V4("10.3.0.8")), ("rw6", V6("fd00:3::8"))]


def test_pools_in_connection_order_and_overlap_check() -> None:
    pools = AddressPools({"small": "10.3.0.1-10.3.0.1", "big": "10.4.0.0/24"})
    assert pools.acquire(["small", "big"], 4, "a", 1) == ("small", V4("10.3.0.1"))
    assert pools.acquire(["small", "big"], 4, "b", 2) == ("big", V4("10.4.0.1"))
    assert pools.acquire(["small"], 4, "c", 3) is None
    assert pools.acquire(["small", "big"], 6, "d", 4) is None  # no IPv6 pool
    # a requested address steers to its own pool
    assert pools.acquire(["small", "big"], 4, "e", 5, V4("10.4.0.50")) == ("big", V4("10.4.0.50"))
    with pytest.raises(ValueError, match="pools a and b overlap"):
        AddressPools({"a": "10.3.0.0/24", "b": "10.3.0.200-10.3.1.5"})
    AddressPools({"a": "10.3.0.0/24", "b": "fd00::/120"})  # families never overlap


ops = st.lists(
    st.tuples(
        st.sampled_from(["acquire", "release"]),
        st.integers(0, 5),  # identity
        st.integers(0, 9),  # holder
        st.one_of(st.none(), st.integers(0, 12)),  # requested (last octet)
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(ops, st.integers(1, 3))
def test_random_operations_keep_the_invariants(sequence: list, n: int) -> None:  # type: ignore[type-arg]
    shares = [AddressPool("p", "10.3.0.1-10.3.0.10", share=(k, n)) for k in range(n)]
    held: dict[tuple[int, int], tuple[str, object]] = {}  # (share, holder) -> (identity, addr)
    for op, who, holder, want in sequence:
        k = holder % n
        pool = shares[k]
        if op == "acquire":
            requested = V4(f"10.3.0.{want}") if want is not None else None
            address = pool.acquire(f"id{who}", holder, requested)
            if (k, holder) in held:
                assert address == held[k, holder][1]
                continue
            if address is not None:
                assert address in pool
                held[k, holder] = (f"id{who}", address)
        else:
            address = pool.release(holder)
            assert address == (held.pop((k, holder))[1] if (k, holder) in held else None)
        # an online address belongs to one identity, across all shares
        owners: dict[object, str] = {}
        for identity, addr in held.values():
            assert owners.setdefault(addr, identity) == identity
        for s in shares:
            counts = s.counts()
            assert sum(counts.values()) == s.size and min(counts.values()) >= 0
