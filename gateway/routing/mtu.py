"""The MTU of an XFRM interface: the path MTU to the peer minus what ESP adds.

A packet routed into the interface leaves as ESP: outer IP header (20 or 40), the UDP
header with NAT-T (8), SPI and sequence number (8), the suite's IV, padding to its block
size, pad length and next header (2) and the ICV (bpf/mtu.py has the arithmetic and its
derivation from RFC 4303; the kernel's esp4/esp6 get_mtu compute the same). So the
interface MTU follows from the negotiated Child SA (its ChildSaSpec: the algorithm names
as the kernel spells them, the outer family, the encapsulation) and the MTU of the route
to the peer (RouteManager.path_to). Never a blind 1400: an algorithm whose sizes are not
known here is an error, not a guess.

One interface can carry several Child SAs (several children of a connection share its
if_id): its MTU is the smallest that any of them allows.
"""

from __future__ import annotations

from bpf.mtu import MIN_MTU_IPV6, EspOverhead, tunnel_mtu
from gateway.xfrm.spec import ChildSaSpec, EspTransform
from ike.crypto import ENCR

# IV and block size per encryption algorithm, by the kernel's name for it (from the
# suites the IKE engine negotiates: AES-GCM-16, AES-CBC, ChaCha20-Poly1305).
_CIPHERS = {e.kernel_name: (e.iv_size, e.block_size) for e in ENCR.values()}

__all__ = ["MIN_MTU_IPV6", "esp_overhead", "xfrm_interface_mtu"]


def esp_overhead(esp: EspTransform) -> EspOverhead:
    """IV, ICV and block size of a negotiated ESP transform (ValueError if unknown)."""
    name = esp.aead or esp.crypt
    sizes = _CIPHERS.get(name or "")
    if sizes is None:
        raise ValueError(f"ESP algorithm {name!r}: its overhead is not known, no MTU derived")
    iv, block = sizes
    if esp.aead:
        icv = esp.icv_bits // 8
    else:
        icv = esp.trunc_bits // 8 if esp.integ else 0
    return EspOverhead(iv_size=iv, icv_size=icv, block_size=block)


def xfrm_interface_mtu(path_mtu: int, *specs: ChildSaSpec) -> int:
    """The largest packet the interface can take so that, once ESP-encapsulated by any
    of `specs`, it still fits `path_mtu` (bpf.mtu.MtuError when nothing fits)."""
    if not specs:
        raise ValueError("an interface MTU needs at least one Child SA")
    mtus: list[int] = []
    for spec in specs:
        overhead = esp_overhead(spec.esp)
        inner_families = (False,) if spec.mode == "tunnel" else (False, True)
        mtus.extend(
            tunnel_mtu(
                path_mtu,
                overhead,
                outer_ipv6=spec.remote.version == 6,
                udp_encap=spec.encap is not None,
                mode=spec.mode,
                inner_ipv6=inner_ipv6,
            )
            for inner_ipv6 in inner_families
        )
    return min(mtus)
