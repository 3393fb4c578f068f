"""XFRM backend against a real kernel with ESP (runs in the VM; see tests/vmplugin.py).

Every SA and policy here is installed by gateway.xfrm only, in two namespaces the test
made; keys come from the test (no IKE). Few test functions, each doing a lot: a VM boot
and TCG emulation make every test expensive.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time

import pytest

from gateway.netns import Netns
from gateway.xfrm import (
    Acquire,
    Lifetime,
    OwnedRange,
    SaExpired,
    XfrmError,
    XfrmEventReader,
    XfrmManager,
)
from gateway.xfrm.manager import InstalledChildSa
from gateway.xfrm.spec import EspTransform, Mode
from tests.support.xfrm import (
    CBC_SHA256,
    GCM,
    V4_TRANSPORT,
    V4_TUNNEL,
    V6_TRANSPORT,
    V6_TUNNEL,
    Plan,
    add_foreign_policy,
    encap_socket,
    ip_xfrm_blocks,
    key_pair,
    ping,
    setup_inner,
    spec_pair,
    tcp_roundtrip,
)

CASES: list[tuple[Plan, Mode, bool, EspTransform]] = [
    # (plan, mode, encap, esp)
    (V4_TUNNEL, "tunnel", False, GCM),
    (V4_TUNNEL, "tunnel", True, CBC_SHA256),
    (V6_TUNNEL, "tunnel", False, CBC_SHA256),
    (V6_TUNNEL, "tunnel", True, GCM),
    (V4_TRANSPORT, "transport", False, CBC_SHA256),
    (V4_TRANSPORT, "transport", True, GCM),
    (V6_TRANSPORT, "transport", False, GCM),
    (V6_TRANSPORT, "transport", True, CBC_SHA256),
]


def check_readback(ns: Netns, mgr: XfrmManager, child: InstalledChildSa) -> None:
    """What our decoder reads equals what iproute2 prints for the same objects."""
    spec = child.spec
    state_blocks = ip_xfrm_blocks(ns, "state")
    for sa in mgr.read_states(spec):
        block = next(b for b in state_blocks if f"spi {sa.spi:#010x} " in b)
        assert block.startswith(f"src {sa.src} dst {sa.dst}\n"), block
        mode = "tunnel" if sa.mode == 1 else "transport"
        assert f"reqid {sa.reqid} mode {mode}" in block, block
        if spec.esp.aead:
            assert sa.aead == spec.esp.aead
            assert f"aead {sa.aead} 0x{sa.encr_key.hex()} {sa.icv_or_trunc_bits}" in block
        else:
            assert (sa.crypt, sa.auth) == (spec.esp.crypt, spec.esp.integ)
            assert f"enc {sa.crypt} 0x{sa.encr_key.hex()}" in block, block
            assert f"auth-trunc {sa.auth} 0x{sa.integ_key.hex()} {sa.icv_or_trunc_bits}" in block
        if spec.encap:
            assert sa.encap is not None
            assert f"encap type espinudp sport {sa.encap[1]} dport {sa.encap[2]}" in block
        else:
            assert sa.encap is None and "encap" not in block
        assert f"replay_window {sa.replay_window}," in block, block
        assert sa.esn == spec.esn and ("flag esn" in block) == spec.esn, block
        assert sa.replay_window == spec.replay_window
    policy_blocks = ip_xfrm_blocks(ns, "policy")
    ours = [p for p in mgr.policies() if spec.reqid in p.reqids]
    assert len(ours) == len(policy_blocks) == (3 if spec.mode == "tunnel" else 2)
    names = {0: "in", 1: "out", 2: "fwd"}
    for pol in ours:
        sel = pol.selector
        block = next(
            b
            for b in policy_blocks
            if b.startswith(f"src {sel.src} dst {sel.dst}") and f"dir {names[pol.direction]} " in b
        )
        assert f"priority {pol.priority} " in block
        (tmpl,) = pol.templates
        assert f"reqid {tmpl.reqid} mode {'tunnel' if tmpl.mode == 1 else 'transport'}" in block
        if tmpl.mode == 1:
            assert f"tmpl src {tmpl.src} dst {tmpl.dst}" in block


def test_child_sa_traffic_all_modes(netns_pair: tuple[Netns, Netns]) -> None:
    """Tunnel/transport x UDP encap or not x IPv4/IPv6 (AES-GCM with ESN, or CBC+HMAC):
    ping and TCP pass through ESP installed by our backend, `ip xfrm` agrees with our
    read-back, counters and GETAE sequence numbers move,
    delete leaves nothing; the tunnel cases also rekey (make-before-break) under
    traffic, and one migrates to new addresses."""
    a, b = netns_pair
    with XfrmManager(netns=a.name) as ma, XfrmManager(netns=b.name) as mb:
        setup_inner(a, b, V4_TUNNEL)
        setup_inner(a, b, V6_TUNNEL)
        sockets = [encap_socket(ns, v6) for ns in (a, b) for v6 in (False, True)]
        try:
            for i, (plan, mode, encap, esp) in enumerate(CASES):
                reqid = ma.allocate_reqid()
                sa, sb = spec_pair(
                    plan,
                    reqid,
                    mode=mode,
                    encap=encap,
                    esp=esp,
                    spi_base=0xC0000100 + 16 * i,
                    esn=esp is GCM,
                )
                ca, cb = ma.install(sa), mb.install(sb)
                label = f"{plan.outer_a} {mode} encap={encap} {esp.description}"
                try:
                    check_readback(a, ma, ca)
                    ping(a, plan.source_a, plan.target_b, peer=b)
                    assert tcp_roundtrip(a, b, plan.source_a, plan.target_b) == 200_000, label
                    counters = ma.counters(ca)
                    assert counters.packets_out >= 3 and counters.packets_in >= 3, label
                    assert counters.bytes_out > 200_000, (label, counters)
                    peer = mb.counters(cb)
                    assert peer.packets_in >= 3 and peer.bytes_in > 200_000, (label, peer)
                    ae = ma.read_replay(ca.spec, inbound=False)  # GETAE
                    assert ae.oseq >= counters.packets_out and ae.replay_window == 1024, ae
                    assert ae.packets >= counters.packets_out, (ae, counters)
                    assert mb.read_replay(cb.spec, inbound=True).seq >= ae.oseq - 2, label
                    if mode == "tunnel":
                        ca, cb = rekey_under_traffic(a, ma, mb, ca, cb, plan)
                    if plan is V4_TUNNEL and not encap:
                        ca, cb = migrate_both(a, b, ma, mb, ca, cb)
                finally:
                    ma.delete(ca)
                    mb.delete(cb)
                assert ma.states() == [] and ma.policies() == [], label
                assert mb.states() == [] and mb.policies() == [], label
        finally:
            for s in sockets:
                s.close()
        stat = ma.xfrm_stat()
        assert "XfrmInNoStates" in stat and stat["XfrmInTmplMismatch"] == 0


def rekey_under_traffic(
    a: Netns,
    ma: XfrmManager,
    mb: XfrmManager,
    ca: InstalledChildSa,
    cb: InstalledChildSa,
    plan: Plan,
) -> tuple[InstalledChildSa, InstalledChildSa]:
    """RFC 7296 §2.8: new SAs with new SPIs and keys replace the old ones; traffic moves
    to the new outbound SA and the old ones are gone."""
    ka, kb = key_pair(ca.spec.esp, 7)
    new_a = dataclasses.replace(
        ca.spec, spi_in=ca.spec.spi_in + 8, spi_out=ca.spec.spi_out + 8, keys_in=kb, keys_out=ka
    )
    new_b = dataclasses.replace(
        cb.spec, spi_in=cb.spec.spi_in + 8, spi_out=cb.spec.spi_out + 8, keys_in=ka, keys_out=kb
    )
    # Responder side first installs the new pair, keeping its old inbound for a moment.
    nb = mb.replace(cb, new_b, keep_old_inbound=True)
    na = ma.replace(ca, new_a)
    ping(a, plan.source_a, plan.target_b, count=2)
    mb.delete_state(cb.spec, inbound=True)
    spis = {s.spi for s in ma.states()}
    assert spis == {new_a.spi_in, new_a.spi_out}
    assert {s.spi for s in mb.states()} == {new_b.spi_in, new_b.spi_out}
    assert ma.counters(na).packets_out >= 2 and mb.counters(nb).packets_in >= 2
    return na, nb


def migrate_both(
    a: Netns,
    b: Netns,
    ma: XfrmManager,
    mb: XfrmManager,
    ca: InstalledChildSa,
    cb: InstalledChildSa,
) -> tuple[InstalledChildSa, InstalledChildSa]:
    """MOBIKE-style address change: same SPIs, keys, sequence numbers and counters."""
    a.ip("addr", "add", "198.51.100.1/24", "dev", "eth0")
    b.ip("addr", "add", "198.51.100.2/24", "dev", "eth0")
    before = ma.counters(ca)
    oseq_before = ma.read_states(ca.spec)[1].oseq
    new_a = ipaddress.ip_address("198.51.100.1")
    new_b = ipaddress.ip_address("198.51.100.2")
    ma_child = ma.migrate(ca, new_a, new_b)
    mb_child = mb.migrate(cb, new_b, new_a)
    for ns, via, net in ((a, "198.51.100.2", "10.2.0.0/24"), (b, "198.51.100.1", "10.1.0.0/24")):
        ns.ip("route", "replace", net, "via", via, "src", "10.1.0.1" if ns is a else "10.2.0.1")
    out_state = ma.read_states(ma_child.spec)[1]
    assert (str(out_state.src), str(out_state.dst)) == ("198.51.100.1", "198.51.100.2")
    assert out_state.oseq == oseq_before and out_state.spi == ca.spec.spi_out
    assert ma.counters(ma_child).bytes_out == before.bytes_out
    ping(a, "10.1.0.1", "10.2.0.1", count=2)
    assert ma.counters(ma_child).packets_out >= before.packets_out + 2
    assert "198.51.100.2" in a.ip("xfrm", "policy").stdout
    return ma_child, mb_child


def test_lifetimes_events_reconcile_offload(netns_pair: tuple[Netns, Netns]) -> None:
    """Soft/hard packet limits raise EXPIRE events, a trap policy raises ACQUIRE; a
    half-installed Child (a crash between batches) is removed by reconcile while
    `ip xfrm` SAs of other software survive untouched and decode correctly; offload
    auto falls back to software on veth and reports it, offload crypto fails cleanly."""
    a, b = netns_pair
    plan = V4_TRANSPORT
    with XfrmManager(netns=a.name) as ma, XfrmManager(netns=b.name) as mb:
        reader = XfrmEventReader(netns=a.name)
        try:
            # -- lifetimes: soft at 3 packets, hard at 6 (outbound of a)
            reqid = ma.allocate_reqid()
            life = Lifetime(soft_packets=3, hard_packets=6)
            sa, sb = spec_pair(plan, reqid, mode="transport", encap=False, lifetime=life)
            ca = ma.install(sa)
            mb.install(sb)
            out_sa = ma.read_states(sa)[1]
            assert (out_sa.soft_packet_limit, out_sa.hard_packet_limit) == (3, 6)
            a.run("ping", "-c", "8", "-i", "0.2", "-W", "1", plan.outer_b, check=False, timeout=60)
            events = wait_events(
                reader, lambda ev: any(isinstance(e, SaExpired) and e.hard for e in ev)
            )
            expiries = [(e.sa.spi, e.hard) for e in events if isinstance(e, SaExpired)]
            assert (sa.spi_out, False) in expiries and (sa.spi_out, True) in expiries
            assert expiries.index((sa.spi_out, False)) < expiries.index((sa.spi_out, True))
            hard = next(e for e in events if isinstance(e, SaExpired) and e.hard)
            assert hard.sa.reqid == reqid and str(hard.sa.dst) == plan.outer_b
            ma.delete(ca)  # the hard-expired state is already gone: delete tolerates it
            mb.delete(sb)
            assert ma.states() == [] and ma.policies() == []

            # -- ACQUIRE from a trap policy (on-demand initiation)
            trap, _ = spec_pair(
                plan, ma.allocate_reqid(), mode="transport", encap=False, spi_base=0xC0000200
            )
            ma.install_trap(trap)
            a.run("ping", "-c", "1", "-W", "1", plan.outer_b, check=False, timeout=30)
            events = wait_events(reader, lambda ev: any(isinstance(e, Acquire) for e in ev))
            acq = next(e for e in events if isinstance(e, Acquire))
            assert acq.reqid == trap.reqid and str(acq.dst) == plan.outer_b
            assert str(acq.selector.dst) == f"{plan.outer_b}/32"
            ma.remove_trap(trap)
        finally:
            reader.close()

        # -- foreign objects (another IKE daemon's) installed with ip xfrm
        a.ip(
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x00001001",
            "reqid",
            "7",
            "mode",
            "tunnel",
            "replay-window",
            "32",
            "aead",
            "rfc4106(gcm(aes))",
            "0x" + "11" * 20,
            "128",
            "encap",
            "espinudp",
            "4500",
            "4501",
            "0.0.0.0",
        )
        a.ip(
            "xfrm",
            "state",
            "add",
            "src",
            "2001:db8::2",
            "dst",
            "2001:db8::1",
            "proto",
            "esp",
            "spi",
            "0x00001002",
            "reqid",
            "7",
            "mode",
            "transport",
            "enc",
            "cbc(aes)",
            "0x" + "22" * 16,
            "auth-trunc",
            "hmac(sha256)",
            "0x" + "33" * 32,
            "128",
        )
        add_foreign_policy(a)
        foreign = {s.spi: s for s in ma.states(ours_only=False)}
        f1, f2 = foreign[0x1001], foreign[0x1002]
        assert (f1.aead, f1.icv_or_trunc_bits, f1.encr_key, f1.reqid, f1.mode) == (
            "rfc4106(gcm(aes))",
            128,
            b"\x11" * 20,
            7,
            1,
        )
        assert f1.encap == (2, 4500, 4501) and f1.replay_window == 32
        assert (str(f2.src), str(f2.dst), f2.crypt, f2.auth, f2.encr_key, f2.integ_key) == (
            "2001:db8::2",
            "2001:db8::1",
            "cbc(aes)",
            "hmac(sha256)",
            b"\x22" * 16,
            b"\x33" * 32,
        )
        assert ma.states() == [] and ma.policies() == []  # not ours

        # -- a crash mid-install: the first batch (states + 1 policy) went in, the
        # process died before the rest. A new manager reconciles at start-up.
        survivor_reqid = ma.allocate_reqid()
        survivor, _ = spec_pair(
            V4_TUNNEL, survivor_reqid, mode="tunnel", encap=False, spi_base=0xC0000300
        )
        ma.install(survivor)
        crashed, _ = spec_pair(
            V6_TUNNEL, ma.allocate_reqid(), mode="tunnel", encap=False, spi_base=0xC0000400
        )
        partial = ma._state_ops(crashed, None) + ma._policy_ops(crashed)[:1]
        assert ma._run_groups([partial], rollback=False) == [None]
        assert len(ma.states()) == 4 and len(ma.policies()) == 4
        with XfrmManager(netns=a.name, owned=OwnedRange()) as fresh:
            report = fresh.reconcile(keep_reqids={survivor_reqid})
        assert (report.removed_states, report.removed_policies) == (2, 1)
        assert (report.adopted_states, report.adopted_policies) == (2, 3)
        assert {s.reqid for s in ma.states()} == {survivor_reqid}
        assert {s.spi for s in ma.states(ours_only=False)} == {
            0x1001,
            0x1002,
            survivor.spi_in,
            survivor.spi_out,
        }
        assert len(ma.policies(ours_only=False)) == 4  # 3 survivor + the foreign one
        report = ma.flush()
        assert report.removed_states == 2 and report.removed_policies == 3
        assert {s.spi for s in ma.states(ours_only=False)} == {0x1001, 0x1002}
        assert "reqid 7 mode tunnel" in a.ip("xfrm", "policy").stdout

        # -- offload: veth has no ESP offload; the kernel falls back silently
        auto, _ = spec_pair(
            plan,
            ma.allocate_reqid(),
            mode="transport",
            encap=False,
            spi_base=0xC0000500,
            offload="auto",
            offload_dev="eth0",
        )
        child = ma.install(auto)
        assert (child.offload_in, child.offload_out, child.offload) == ("none",) * 3
        ma.delete(child)
        crypto, _ = spec_pair(
            plan,
            ma.allocate_reqid(),
            mode="transport",
            encap=False,
            spi_base=0xC0000600,
            offload="crypto",
            offload_dev="eth0",
        )
        with pytest.raises(XfrmError) as info:
            ma.install(crypto)
        assert "offload" in str(info.value) and info.value.errno
        assert ma.states() == [] and ma.policies() == []  # nothing half-installed

        # -- a refused install names the operation and errno, and leaves nothing
        bad, _ = spec_pair(
            plan,
            ma.allocate_reqid(),
            mode="transport",
            encap=False,
            spi_base=0xC0000700,
            esp=type(GCM)(aead="rfc4106(gcm(nosuchcipher))"),
        )
        with pytest.raises(XfrmError) as info:
            ma.install(bad)
        assert info.value.operation.startswith("NEWSA SA in spi=0xc0000701")
        assert ma.states() == [] and ma.policies() == []
        assert "00" * 20 not in str(info.value)


def wait_events(reader: XfrmEventReader, done, timeout: float = 60.0) -> list:  # type: ignore[no-untyped-def]
    events: list = []  # type: ignore[type-arg]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        events.extend(reader.read_available())
        if done(events):
            return events
        time.sleep(0.2)
    raise AssertionError(f"events did not arrive in {timeout}s: {events}")
