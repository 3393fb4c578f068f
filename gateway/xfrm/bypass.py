"""Per-socket bypass policies for the IKE daemon's own UDP sockets.

A transport-mode policy between the two gateways (or any policy whose selector covers
the IKE packets) would otherwise apply to IKE itself and to ESP-in-UDP arriving on the
NAT-T socket: the kernel runs the inbound policy check on the UDP packet before handing
it to the socket's encapsulation handler (udp_queue_rcv_one_skb), so the packet fails
with XfrmInTmplMismatch. A socket policy (IP_XFRM_POLICY / IPV6_XFRM_POLICY) of action
allow and no templates, for each direction, takes precedence over the SPD for that
socket's traffic (RFC 4301 §5.2 lets IKE bypass the SPD).
"""

from __future__ import annotations

import socket

from gateway.xfrm import netlink as nl
from gateway.xfrm import wire

IP_XFRM_POLICY = 17  # include/uapi/linux/in.h
IPV6_XFRM_POLICY = 35  # include/uapi/linux/in6.h
UDP_ENCAP = 100  # include/uapi/linux/udp.h


def bypass_socket(sock: socket.socket) -> None:
    """Let this socket's packets (in and out) bypass every XFRM policy."""
    if sock.family == socket.AF_INET6:
        level, opt = socket.IPPROTO_IPV6, IPV6_XFRM_POLICY
    else:
        level, opt = socket.IPPROTO_IP, IP_XFRM_POLICY
    family = 10 if sock.family == socket.AF_INET6 else 2
    sel = wire.ANY_SELECTOR[:6] + (family,) + wire.ANY_SELECTOR[7:]  # the kernel wants one
    for direction in (nl.XFRM_POLICY_IN, nl.XFRM_POLICY_OUT):
        policy = wire.userpolicy_info(
            sel=sel,
            priority=0,
            index=0,
            direction=direction,
            action=nl.XFRM_POLICY_ALLOW,
        )
        sock.setsockopt(level, opt, policy)


def enable_esp_in_udp(sock: socket.socket) -> None:
    """Make a UDP socket (port 4500) hand ESP-in-UDP (RFC 3948) to XFRM and bypass the SPD."""
    sock.setsockopt(socket.IPPROTO_UDP, UDP_ENCAP, nl.UDP_ENCAP_ESPINUDP)
    bypass_socket(sock)
