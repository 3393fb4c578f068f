"""EAP pass-through to a RADIUS server (RFC 3579), sans-IO: the gateway relays the peer's
EAP Responses in Access-Requests and the server's EAP packets back, so the server can run
any EAP method it speaks. One `RadiusEapSession` per EAP conversation.

Per round: `attributes(eap_response)` gives the Access-Request's attributes (User-Name =
the EAP identity, the server's State echoed, NAS identification, EAP-Message), and
`reply(packet, request_authenticator, secret)` reads the verified answer:

- Access-Challenge: the next EAP Request (and a new State to echo);
- Access-Accept: EAP-Success, the MSK = MS-MPPE-Recv-Key | MS-MPPE-Send-Key (RFC 3748
  §7.10 / RFC 5216 §2.3 order, padded with zeros to 64 octets: a 32-octet MS-CHAPv2 MSK
  then equals strongSwan's eap-mschapv2 MSK, and HMAC, the IKE PRF, pads its key with
  zeros anyway), and what the server says about the client: Framed-IP-Address /
  Framed-IPv6-Address (the virtual IP), DNS servers, Session-Timeout, Class;
- Access-Reject: EAP-Failure and the Reply-Message if any.

When the server leaves out the EAP-Message of an Accept or Reject, the Success or
Failure is made here with the Identifier of the last Response (RFC 3579 §2.6.3).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from gateway.radius.codec import (
    NAS_PORT_TYPE_VIRTUAL,
    SERVICE_TYPE_FRAMED,
    VENDOR_MICROSOFT,
    Attr,
    Attribute,
    Code,
    MsAttr,
    RadiusDecodeError,
    RadiusPacket,
    decrypt_mppe_key,
    eap_message,
    eap_message_attributes,
    ip_address,
)
from ike.eap import packet as eap_packet
from ike.eap.errors import EapDecodeError

MSK_LEN = 64
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class RadiusEapReply:
    code: int  # Code.ACCESS_CHALLENGE, ACCESS_ACCEPT or ACCESS_REJECT
    eap: bytes  # the EAP packet for the peer: a Request, Success or Failure
    msk: bytes | None = field(default=None, repr=False)
    framed_ip: ipaddress.IPv4Address | None = None
    framed_ipv6: ipaddress.IPv6Address | None = None
    dns: tuple[IPAddress, ...] = ()
    session_timeout: int | None = None
    classes: tuple[bytes, ...] = ()
    reply_message: str | None = None

    @property
    def accepted(self) -> bool:
        return self.code == Code.ACCESS_ACCEPT

    @property
    def done(self) -> bool:
        return self.code != Code.ACCESS_CHALLENGE


class RadiusEapSession:
    """The RADIUS half of one pass-through EAP conversation. `user_name` is the peer's EAP
    identity; `calling_station_id` names the client (strongSwan sends "ip[port]")."""

    def __init__(
        self,
        user_name: bytes,
        *,
        nas_identifier: bytes = b"gateway",
        nas_ip: IPAddress | None = None,
        calling_station_id: bytes | None = None,
        called_station_id: bytes | None = None,
        framed_mtu: int | None = 1400,
    ) -> None:
        self.user_name = user_name
        self._fixed: list[Attribute] = [
            (Attr.USER_NAME, user_name),
            (Attr.SERVICE_TYPE, SERVICE_TYPE_FRAMED.to_bytes(4, "big")),
            (Attr.NAS_PORT_TYPE, NAS_PORT_TYPE_VIRTUAL.to_bytes(4, "big")),
            (Attr.NAS_IDENTIFIER, nas_identifier),
        ]
        if nas_ip is not None:
            attr = Attr.NAS_IP_ADDRESS if nas_ip.version == 4 else Attr.NAS_IPV6_ADDRESS
            self._fixed.append((attr, nas_ip.packed))
        if calling_station_id is not None:
            self._fixed.append((Attr.CALLING_STATION_ID, calling_station_id))
        if called_station_id is not None:
            self._fixed.append((Attr.CALLED_STATION_ID, called_station_id))
        if framed_mtu is not None:  # lets the server size its EAP-TLS fragments
            self._fixed.append((Attr.FRAMED_MTU, framed_mtu.to_bytes(4, "big")))
        self._state: bytes | None = None
        self._identifier = 0

    def attributes(self, eap_response: bytes) -> list[Attribute]:
        """The attributes of the Access-Request carrying `eap_response`."""
        try:
            self._identifier = eap_packet.decode_eap(eap_response).identifier
        except EapDecodeError as exc:
            raise RadiusDecodeError(f"not an EAP packet to relay: {exc}") from None
        attrs = list(self._fixed)
        if self._state is not None:
            attrs.append((Attr.STATE, self._state))
        return attrs + eap_message_attributes(eap_response)

    def reply(
        self, packet: RadiusPacket, request_authenticator: bytes, secret: bytes
    ) -> RadiusEapReply:
        """Read a verified reply (codec.verify_reply); RadiusDecodeError if it is unusable."""
        eap = eap_message(packet)
        if eap is not None:
            try:
                eap_packet.decode_eap(eap)
            except EapDecodeError as exc:
                raise RadiusDecodeError(f"EAP-Message: {exc}") from None
        if packet.code == Code.ACCESS_CHALLENGE:
            if eap is None:
                raise RadiusDecodeError("Access-Challenge without EAP-Message")
            self._state = packet.first(Attr.STATE)
            return RadiusEapReply(Code.ACCESS_CHALLENGE, eap)
        reply_message = b"".join(packet.all(Attr.REPLY_MESSAGE)).decode("utf-8", "replace")
        if packet.code == Code.ACCESS_REJECT:
            failure = eap or eap_packet.encode_eap(eap_packet.failure(self._identifier))
            return RadiusEapReply(Code.ACCESS_REJECT, failure, reply_message=reply_message or None)
        success = eap or eap_packet.encode_eap(eap_packet.success(self._identifier))
        v4 = _framed(packet, Attr.FRAMED_IP_ADDRESS, 4)
        v6 = _framed(packet, Attr.FRAMED_IPV6_ADDRESS, 6)
        return RadiusEapReply(
            Code.ACCESS_ACCEPT,
            success,
            msk=_msk(packet, request_authenticator, secret),
            framed_ip=v4 if isinstance(v4, ipaddress.IPv4Address) else None,
            framed_ipv6=v6 if isinstance(v6, ipaddress.IPv6Address) else None,
            dns=_dns(packet),
            session_timeout=_u32(packet.first(Attr.SESSION_TIMEOUT)),
            classes=tuple(packet.all(Attr.CLASS)),
            reply_message=reply_message or None,
        )


def _msk(packet: RadiusPacket, request_authenticator: bytes, secret: bytes) -> bytes | None:
    recv = packet.vendor(VENDOR_MICROSOFT, MsAttr.MS_MPPE_RECV_KEY)
    send = packet.vendor(VENDOR_MICROSOFT, MsAttr.MS_MPPE_SEND_KEY)
    if not recv or not send:
        return None
    msk = decrypt_mppe_key(recv[0], secret, request_authenticator) + decrypt_mppe_key(
        send[0], secret, request_authenticator
    )
    if len(msk) > MSK_LEN:
        raise RadiusDecodeError(f"MS-MPPE keys of {len(msk)} bytes")
    return msk.ljust(MSK_LEN, b"\x00")


def _u32(value: bytes | None) -> int | None:
    if value is None:
        return None
    if len(value) != 4:
        raise RadiusDecodeError(f"an integer attribute of {len(value)} bytes")
    return int.from_bytes(value, "big")


def _framed(packet: RadiusPacket, attr: int, version: int) -> IPAddress | None:
    value = packet.first(attr)
    if value is None:
        return None
    addr = ip_address(value)
    if addr.version != version:
        raise RadiusDecodeError(f"{Attr(attr).name} is not an IPv{version} address")
    # 255.255.255.254 "let the NAS choose" and 255.255.255.255 "let the user choose"
    # (RFC 2865 §5.8) name no address: the pool decides.
    return None if version == 4 and int(addr) >= 0xFFFFFFFE else addr


def _dns(packet: RadiusPacket) -> tuple[IPAddress, ...]:
    values = packet.vendor(VENDOR_MICROSOFT, MsAttr.MS_PRIMARY_DNS_SERVER)
    values += packet.vendor(VENDOR_MICROSOFT, MsAttr.MS_SECONDARY_DNS_SERVER)
    values += packet.all(Attr.DNS_SERVER_IPV6_ADDRESS)
    return tuple(ip_address(v) for v in values)
