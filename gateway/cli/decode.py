"""`gateway decode HEX|-`: show an IKEv2 message's header and payload chain.

For debugging captures (tcpdump/tshark hex of a UDP payload). The unencrypted parts are
always shown; with ``--keys SUITE:SK_E[:SK_A]`` the Encrypted payload is checked and its
payloads shown too (SK_E/SK_A of the *sender*: SK_ei/SK_ai for messages from the original
initiator; for AEAD suites SK_E includes the 4-byte salt). Keys are read from the command
line only to decrypt and are never printed.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

from gateway.errors import CommandError
from ike import codec
from ike.config import format_identity
from ike.constants import (
    NON_ESP_MARKER,
    AuthMethod,
    CfgType,
    DhGroup,
    EncrId,
    EsnId,
    ExchangeType,
    IdType,
    IntegId,
    NotifyType,
    PayloadType,
    PrfId,
    ProtocolId,
    TransformType,
    TsType,
    name_of,
)
from ike.crypto import DH_GROUPS, PRF
from ike.errors import DecodeError, LocalError
from ike.keys import IkeSaKeys
from ike.proposals import IkeSuite, parse_proposal
from ike.sk import SkCipher

_TRANSFORM_IDS = {
    TransformType.ENCR: EncrId,
    TransformType.PRF: PrfId,
    TransformType.INTEG: IntegId,
    TransformType.DH: DhGroup,
    TransformType.ESN: EsnId,
}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "decode",
        help="decode an IKEv2 message given as hex (header and payload chain)",
        description="Decode an IKEv2 message (the UDP payload, as hex; '-' reads stdin). "
        "A leading non-ESP marker (port 4500) is skipped.",
    )
    p.add_argument("message", metavar="HEX|-", help="the message as hex, or - for stdin")
    p.add_argument(
        "--keys",
        metavar="SUITE:SK_E[:SK_A]",
        help="decrypt the SK payload: suite in strongSwan syntax (aes256gcm16, aes128-sha256) "
        "and the sender's SK_e (and SK_a for non-AEAD) as hex",
    )
    p.add_argument("--json", action="store_true", help="print the message as JSON")
    p.set_defaults(func=run)


# --------------------------------------------------------------------------- input


def read_message(text: str) -> bytes:
    if text == "-":
        raw = sys.stdin.buffer.read()
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return raw  # binary on stdin
    cleaned = re.sub(r"(0x|[\s:.-])", "", text.strip())
    if not cleaned:
        raise CommandError("no message given")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise CommandError("the message is not hex (pairs of 0-9a-f)") from None


def _cipher(spec: str) -> SkCipher:
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise CommandError("--keys wants SUITE:SK_E[:SK_A]")
    try:
        esp = parse_proposal(parts[0], ProtocolId.ESP)
        ke = bytes.fromhex(parts[1])
        ka = bytes.fromhex(parts[2]) if len(parts) == 3 else b""
    except LocalError as exc:
        raise CommandError(f"--keys: {exc}") from None
    except ValueError:
        raise CommandError("--keys: the keys must be hex") from None
    encr, integ = esp.encr[0], esp.integ[0] if esp.integ else None
    if len(ke) != encr.key_size:
        raise CommandError(f"--keys: {encr.name} needs a {encr.key_size}-byte SK_e, got {len(ke)}")
    if integ and len(ka) != integ.key_size:
        raise CommandError(f"--keys: {integ.name} needs a {integ.key_size}-byte SK_a")
    # One direction is all we need: give both directions the sender's keys.
    suite = IkeSuite(encr, integ, PRF[PrfId.PRF_HMAC_SHA2_256], DH_GROUPS[DhGroup.CURVE25519])
    keys = IkeSaKeys(b"", ka, ka, ke, ke, b"", b"")
    return SkCipher(suite, keys, initiator=False, random=lambda n: bytes(n))


# --------------------------------------------------------------------------- description


def _transform(t: codec.Transform) -> dict[str, Any]:
    ids = _TRANSFORM_IDS.get(TransformType(t.type)) if t.type in _TRANSFORM_IDS else None
    d: dict[str, Any] = {
        "type": name_of(TransformType, t.type),
        "id": name_of(ids, t.id) if ids else t.id,
    }
    if t.key_length is not None:
        d["key_length"] = t.key_length
    if t.other_attributes:
        d["other_attributes"] = [[a, v.hex()] for a, v in t.other_attributes]
    return d


def _ts(s: codec.TrafficSelector) -> dict[str, Any]:
    return {
        "type": name_of(TsType, s.ts_type),
        "protocol": s.ip_protocol,
        "ports": [s.start_port, s.end_port],
        "addresses": [str(s.start_addr), str(s.end_addr)],
    }


def describe_payload(p: codec.Payload) -> dict[str, Any]:
    name = name_of(PayloadType, p.payload_type)
    d: dict[str, Any] = {"payload": name}
    if isinstance(p, codec.SecurityAssociation):
        d["proposals"] = [
            {
                "number": pr.number,
                "protocol": name_of(ProtocolId, pr.protocol),
                "spi": pr.spi.hex(),
                "transforms": [_transform(t) for t in pr.transforms],
            }
            for pr in p.proposals
        ]
    elif isinstance(p, codec.KeyExchange):
        d.update(group=name_of(DhGroup, p.group), length=len(p.data))
    elif isinstance(p, codec.Identification):
        d.update(id_type=name_of(IdType, p.id_type), id=format_identity(p.id_type, p.data))
    elif isinstance(p, codec.Authentication):
        d.update(method=name_of(AuthMethod, p.method), length=len(p.data))
    elif isinstance(p, codec.Nonce | codec.VendorId):
        d.update(length=len(p.data))
        if isinstance(p, codec.VendorId):
            d["data"] = p.data.hex()
    elif isinstance(p, codec.Notify):
        d.update(type=name_of(NotifyType, p.type), protocol=name_of(ProtocolId, p.protocol))
        if p.spi:
            d["spi"] = p.spi.hex()
        if p.data:
            d["data"] = p.data.hex()
    elif isinstance(p, codec.Delete):
        d.update(protocol=name_of(ProtocolId, p.protocol), spis=[s.hex() for s in p.spis])
    elif isinstance(p, codec.TrafficSelectors):
        d["selectors"] = [_ts(s) for s in p.selectors]
    elif isinstance(p, codec.Certificate | codec.CertificateRequest):
        d.update(encoding=p.encoding, length=len(p.data))
    elif isinstance(p, codec.Configuration):
        d.update(
            cfg_type=name_of(CfgType, p.cfg_type),
            attributes=[[a, v.hex()] for a, v in p.attributes],
        )
    elif isinstance(p, codec.Eap):
        d.update(length=len(p.data))
    elif isinstance(p, codec.Encrypted):
        d.update(first_payload=name_of(PayloadType, p.first_payload), length=len(p.body))
    elif isinstance(p, codec.EncryptedFragment):
        d.update(fragment=[p.number, p.total], length=len(p.body))
    elif isinstance(p, codec.UnknownPayload):
        d.update(type=p.type, critical=p.critical, length=len(p.body))
    return d


def describe(data: bytes, cipher: SkCipher | None = None) -> dict[str, Any]:
    nat_t = False
    if data[:4] == NON_ESP_MARKER and len(data) > 4 + 28:
        data, nat_t = data[4:], True
    try:
        msg = codec.decode_message(data)
    except DecodeError as exc:
        raise CommandError(f"not a valid IKEv2 message: {exc}") from None
    out: dict[str, Any] = {
        "exchange": name_of(ExchangeType, msg.exchange_type),
        "response": msg.is_response,
        "from_original_initiator": msg.is_initiator,
        "message_id": msg.message_id,
        "spi_i": msg.spi_i.hex(),
        "spi_r": msg.spi_r.hex(),
        "length": len(data),
        "non_esp_marker": nat_t,
        "payloads": [describe_payload(p) for p in msg.payloads],
    }
    sk = msg.payloads[-1] if msg.payloads else None
    if cipher is not None and isinstance(sk, codec.Encrypted):
        try:
            inner = cipher.unprotect(data, sk)
        except DecodeError as exc:
            raise CommandError(f"cannot decrypt the SK payload: {exc}") from None
        out["payloads"][-1]["decrypted"] = [describe_payload(p) for p in inner]
    return out


def _fmt_value(k: str, v: Any) -> str:
    if isinstance(v, list) and v and isinstance(v[0], dict):
        return ""
    return f"{k}={v}"


def render(d: dict[str, Any]) -> str:
    kind = "response" if d["response"] else "request"
    who = "original initiator" if d["from_original_initiator"] else "original responder"
    lines = [
        f"{d['exchange']} {kind} from the {who}, message ID {d['message_id']}, "
        f"{d['length']} bytes{' (after the non-ESP marker)' if d['non_esp_marker'] else ''}",
        f"  SPIi {d['spi_i']}  SPIr {d['spi_r']}",
    ]

    def payloads(items: list[dict[str, Any]], indent: str) -> None:
        for p in items:
            fields = [
                _fmt_value(k, v)
                for k, v in p.items()
                if k not in ("payload", "proposals", "selectors", "decrypted")
            ]
            lines.append(f"{indent}{p['payload']} " + " ".join(f for f in fields if f))
            for pr in p.get("proposals", []):
                ts = ", ".join(
                    f"{t['type']} {t['id']}" + (f"/{t['key_length']}" if "key_length" in t else "")
                    for t in pr["transforms"]
                )
                spi = f" spi {pr['spi']}" if pr["spi"] else ""
                lines.append(f"{indent}  proposal {pr['number']} {pr['protocol']}{spi}: {ts}")
            for s in p.get("selectors", []):
                net = "-".join(s["addresses"])
                ports = "-".join(map(str, s["ports"]))
                lines.append(f"{indent}  {net} protocol {s['protocol']} ports {ports}")
            if "decrypted" in p:
                lines.append(f"{indent}  decrypted:")
                payloads(p["decrypted"], indent + "    ")

    payloads(d["payloads"], "  ")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    data = read_message(args.message)
    cipher = _cipher(args.keys) if args.keys else None
    d = describe(data, cipher)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        print(render(d))
    return 0
