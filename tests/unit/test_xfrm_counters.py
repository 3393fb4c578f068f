"""Counters without a kernel: the lean dump scanner reads what pyroute2 decodes, a
scrape's table maps onto Child SAs, and a DELSA notification (the kernel's, with the
state in XFRMA_SA) becomes SaDeleted with the final counts while the NEWSA/UPDSA the SA
group also sends are skipped undecoded. The real kernel: tests/kernel/test_offload_kernel.py."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from gateway.xfrm import SaDeleted, XfrmManager, wire
from gateway.xfrm import netlink as nl
from gateway.xfrm.events import XfrmEventReader
from gateway.xfrm.manager import _DUMP_ESP_ONLY
from gateway.xfrm.scan import SaCounters, scan_counters
from tests.support.xfrm import V4_TUNNEL, spec_pair

ADDR_A = ipaddress.ip_address("192.0.2.1").packed.ljust(16, b"\0")
ADDR_B = ipaddress.ip_address("192.0.2.2").packed.ljust(16, b"\0")


def usersa_info(daddr: bytes, spi: int, reqid: int, n: int) -> bytes:
    """A usersa_info with distinct values in every counter (n, n+1, ...)."""
    return nl.pack_fields(
        nl.USERSA_INFO,
        {
            "id_daddr": daddr,
            "id_spi": spi,
            "id_proto": nl.IPPROTO_ESP,
            "saddr": ADDR_A,
            "curlft_bytes": 1000 * n,
            "curlft_packets": n,
            "curlft_add_time": 1_700_000_000,
            "stats_replay_window": n + 1,
            "stats_replay": n + 2,
            "stats_integrity_failed": n + 3,
            "seq": 99,
            "reqid": reqid,
            "family": 2,
            "mode": 1,
        },
    )


def test_scan_counters_reads_what_pyroute2_decodes() -> None:
    body = usersa_info(ADDR_B, 0xC0DE0001, 0x4E470005, 7)
    msg = struct.pack("=IHHII", 16 + len(body), nl.XFRM_MSG_NEWSA, 0, 1, 0) + body
    decoded = next(iter(nl.MarshalXfrm().parse(msg)))
    row = scan_counters(msg, 16)
    assert row == SaCounters(ADDR_B, 0xC0DE0001, 0x4E470005, 7000, 7, 8, 9, 10)
    assert (row.spi, row.reqid) == (decoded["id_spi"], decoded["reqid"])
    assert (row.bytes, row.packets) == (decoded["curlft_bytes"], decoded["curlft_packets"])
    assert (row.replay_window, row.replay, row.integrity_failed) == (
        decoded["stats_replay_window"],
        decoded["stats_replay"],
        decoded["stats_integrity_failed"],
    )


class DumpChannel:
    """Answers the GETSA dump with prepared usersa_info payloads."""

    netns = None

    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.requests: list[tuple[int, int, bytes]] = []

    def dump_scan(self, msg_type: int, reply_type: int, scan: Any, payload: bytes) -> list[Any]:
        self.requests.append((msg_type, reply_type, payload))
        return [scan(p, 0) for p in self.payloads]


def test_child_counters_from_one_dump() -> None:
    a, _ = spec_pair(V4_TUNNEL, 0x4E470001, mode="tunnel", encap=False)
    other, _ = spec_pair(V4_TUNNEL, 0x4E470002, mode="tunnel", encap=False, spi_base=0xC0000200)
    channel = DumpChannel(
        [
            usersa_info(ADDR_A, a.spi_in, a.reqid, 5),  # inbound: to us
            usersa_info(ADDR_B, a.spi_out, a.reqid, 9),  # outbound: to the peer
            usersa_info(ADDR_A, other.spi_in, other.reqid, 3),  # its outbound is gone
            usersa_info(ADDR_A, 0x1001, 7, 1),  # another daemon's (reqid 7): not ours
            usersa_info(ADDR_A, 0, a.reqid, 1),  # larval (ACQUIRE placeholder)
        ]
    )
    mgr = XfrmManager(channel)  # type: ignore[arg-type]
    table = mgr.dump_counters()
    assert len(table) == 3 and (ADDR_A, 0x1001) not in table
    assert len(mgr.dump_counters(ours_only=False)) == 4
    # the request asks the kernel for ESP states only (XFRMA_PROTO after a usersa_info)
    assert channel.requests == [(nl.XFRM_MSG_GETSA, nl.XFRM_MSG_NEWSA, _DUMP_ESP_ONLY)] * 2
    assert _DUMP_ESP_ONLY.endswith(wire.nla(25, wire.u8(50)))
    counters, missing = mgr.child_counters([a, other], table)
    assert missing is None
    assert counters is not None
    assert (counters.bytes_in, counters.packets_in) == (5000, 5)
    assert (counters.bytes_out, counters.packets_out) == (9000, 9)
    # error counters are the inbound state's
    assert (counters.replay_window_errors, counters.replay_errors, counters.integrity_failed) == (
        6,
        7,
        8,
    )


def delsa_notification(info: bytes, spi: int) -> bytes:
    """What the kernel multicasts on XFRMNLGRP_SA when a state is deleted
    (xfrm_notify_sa): usersa_id, XFRMA_SA with the whole usersa_info, the state's
    other attributes beside it."""
    body = wire.usersa_id(ADDR_B, spi, 2, nl.IPPROTO_ESP)
    body += wire.nla(6, info)
    body += wire.nla(18, wire.algo_aead("rfc4106(gcm(aes))", bytes(20), 128))
    return struct.pack("=IHHII", 16 + len(body), nl.XFRM_MSG_DELSA, 0, 0, 0) + body


def test_delsa_notification_carries_the_final_counts() -> None:
    info = usersa_info(ADDR_B, 0xC0DE0002, 0x4E470009, 41)
    deleted = delsa_notification(info, 0xC0DE0002)
    newsa = struct.pack("=IHHII", 16 + len(info), nl.XFRM_MSG_NEWSA, 0, 0, 0) + info
    reader = XfrmEventReader.__new__(XfrmEventReader)
    reader.marshal = nl.MarshalXfrm()
    events = reader._decode(newsa + deleted + newsa)  # one datagram, three messages
    assert len(events) == 1 and isinstance(events[0], SaDeleted)
    sa = events[0].sa
    assert (sa.spi, sa.reqid, str(sa.dst)) == (0xC0DE0002, 0x4E470009, "192.0.2.2")
    assert (sa.cur_bytes, sa.cur_packets) == (41000, 41)
    assert (sa.replay_window_errors, sa.replay_errors, sa.integrity_failed) == (42, 43, 44)
    assert sa.aead == "rfc4106(gcm(aes))"
    # our own DELSA request (no XFRMA_SA) is no event
    request = wire.usersa_id(ADDR_B, 0xC0DE0002, 2, nl.IPPROTO_ESP)
    own = struct.pack("=IHHII", 16 + len(request), nl.XFRM_MSG_DELSA, 0, 0, 0) + request
    assert reader._decode(own) == []
