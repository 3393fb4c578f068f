"""strongSwan as the real peer of the host and kernel tests.

`charon(ns, swanctl_conf)` is the one way a test runs charon: started in its namespace
(the vici socket waited for, the configuration loaded), stopped by its pid and its files
removed when the block ends, pass or fail. The StrongSwan class itself is the lab's
(gateway/lab/strongswan.py). Below it: the scenario several daemon tests share (our
daemon as gw-west, charon as gw-east, one PSK connection), and the check that the keys
our engine derived work with charon's ESP.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gateway.lab.strongswan import (
    CHARON,
    LIBIPSEC_PLUGINS,
    NETLINK_PLUGINS,
    SWANCTL,
    StrongSwan,
    StrongSwanError,
    parse_vici_raw,
)
from gateway.netns import Netns
from ike.events import ChildSaEstablished
from tests.support import esp as esp_packet
from tests.support.ike_udp import UdpDriver
from tests.support.swanctl_peer import peer_swanctl

__all__ = [
    "CHARON",
    "LIBIPSEC_PLUGINS",
    "NETLINK_PLUGINS",
    "SWANCTL",
    "StrongSwan",
    "StrongSwanError",
    "charon",
    "parse_vici_raw",
]

# kernel-libipsec routes the tunnel via ipsec0 and needs a local address inside charon's
# local_ts, else it answers TS_UNACCEPTABLE ("error installing route", PLATFORM.md)
INSIDE_LOCAL_TS = "10.2.0.1/32"


@contextmanager
def charon(
    ns: Netns,
    swanctl_conf: str | None = None,
    *,
    plugins: str = LIBIPSEC_PLUGINS,
    inside: str | None = INSIDE_LOCAL_TS,
) -> Iterator[StrongSwan]:
    """charon in `ns` for the block, `swanctl_conf` loaded (None: not started yet, the
    test starts it). With kernel-libipsec, `inside` (an address inside charon's local_ts)
    is put on `ns`'s lo first; None when the test lays its addresses itself."""
    if inside is not None and plugins == LIBIPSEC_PLUGINS:
        ns.ip("addr", "add", inside, "dev", "lo")
    sw = StrongSwan(ns, plugins=plugins)
    try:
        if swanctl_conf is not None:
            sw.start(swanctl_conf)
        yield sw
    finally:
        sw.close()


# --------------------------------------------------------------------------- daemon vs charon
# Our daemon (gw-west, OURS) and charon (gw-east, THEIRS) over the netns_pair veth, one
# PSK connection: 10.1.0.0/16 behind us, 10.2.0.0/16 behind charon, charon's child "net".

OURS, THEIRS = "192.0.2.1", "192.0.2.2"
SWAN_PSK = "interop-daemon-psk-0123456789"
SWAN_IKE, SWAN_ESP = "aes256gcm16-prfsha384-x25519", "aes256gcm16"
SWAN_CONF = peer_swanctl(THEIRS, OURS, SWAN_IKE, SWAN_ESP, SWAN_PSK)


def swan_sa(sw: StrongSwan) -> dict[str, object] | None:
    sas = sw.list_sas()
    if len(sas) == 1 and sas[0]["state"] == "ESTABLISHED":
        children = list(sas[0]["child-sas"].values())  # type: ignore[attr-defined]
        if children and children[0]["state"] == "INSTALLED":
            return sas[0]
    return None


def assert_same_view(ours: dict, theirs: dict) -> None:  # type: ignore[type-arg]
    assert (ours["spi_i"], ours["spi_r"]) == (theirs["initiator-spi"], theirs["responder-spi"])
    (child,) = ours["children"]
    (swan_child,) = theirs["child-sas"].values()
    assert child["state"] == "INSTALLED" and swan_child["state"] == "INSTALLED"
    assert (int(swan_child["spi-in"], 16), int(swan_child["spi-out"], 16)) == (
        int(child["spi_out"], 16),
        int(child["spi_in"], 16),
    )
    assert swan_child["encr-alg"] == "AES_GCM_16" and swan_child["encr-keysize"] == "256"
    assert child["esp_proposal"] == SWAN_ESP
    assert swan_child["local-ts"] == child["remote_ts"] == ["10.2.0.0/16"]
    assert swan_child["remote-ts"] == child["local_ts"] == ["10.1.0.0/16"]
    assert (ours["local_id"], ours["remote_id"]) == ("gw-west", "gw-east")


# --------------------------------------------------------------------------- engine vs charon


def ping_through_tunnel(drv: UdpDriver, child: ChildSaEstablished, sw: StrongSwan) -> None:
    """ESP sealed with our outbound keys reaches strongSwan's libipsec, which decrypts it,
    answers the ping and encrypts the reply with its keys, which our inbound keys open."""
    assert child.encap is not None  # kernel-libipsec forces UDP encapsulation
    request = esp_packet.icmp_echo("10.1.0.1", "10.2.0.1", 0x4242, 1, b"engine-derived keys")
    drv.socks[child.encap[0]].sendto(
        esp_packet.seal(child, 1, request), (child.remote_addr, child.encap[1])
    )
    assert drv.run_until(lambda evs: bool(drv.esp_received), 5), sw.logs()[-3000:]
    seq, reply = esp_packet.open_(child, drv.esp_received[0][0])
    assert seq == 1
    assert reply[9] == 1 and reply[12:16] == bytes([10, 2, 0, 1])  # ICMP from 10.2.0.1
    assert reply[16:20] == bytes([10, 1, 0, 1]) and reply[20] == 0  # echo reply to us
    assert reply.endswith(b"engine-derived keys")
    c = next(iter(sw.list_sas()[0]["child-sas"].values()))
    assert int(c["packets-in"]) == 1 and int(c["packets-out"]) == 1
