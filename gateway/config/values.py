"""The configuration's value syntax: durations, sizes, addresses, selectors, proposals.

Each parser takes the raw TOML value and returns the parsed one or raises ValueError with
a message meant for the user (the reader adds the key and line).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Final

from gateway.config.schema import ANY_ADDR, DEFAULT_METRICS_PORT, DYNAMIC_TS

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_DURATION_UNITS: Final = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)\s*$", re.IGNORECASE)
_SIZE_UNITS: Final = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
_PROPOSAL_TOKEN_RE = re.compile(r"^[a-z0-9_]+$")


def parse_duration(value: object) -> float:
    """swanctl.conf durations: "90", "10s", "5m", "4h", "1d" or a non-negative number."""
    if isinstance(value, bool):
        raise ValueError(f'expected a duration like "10s" or "4h", got {value!r}')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value!r}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION_RE.match(value.lower())
        if match:
            return float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    raise ValueError(f'expected a duration like "10s", "5m", "4h" or "1d", got {value!r}')


def parse_size(value: object) -> int:
    """Byte/packet counts: 1000, "500k", "100M", "2G" (binary multiples)."""
    if isinstance(value, bool):
        raise ValueError(f'expected a count like 1000 or "100M", got {value!r}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count cannot be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match:
            return int(match.group(1)) * _SIZE_UNITS[match.group(2).lower()]
    raise ValueError(f'expected a count like 1000, "500k", "100M" or "2G", got {value!r}')


def parse_addr(value: str) -> str:
    """An IKE address: an IP address, a subnet, or %any. Returns the normalised text."""
    if value == ANY_ADDR:
        return value
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError:
        raise ValueError(f"{value!r} is not an IP address, a subnet or {ANY_ADDR}") from None


def parse_ts(value: str) -> str:
    """A traffic selector: a CIDR subnet or address, or "dynamic" (our/peer's address)."""
    if value == DYNAMIC_TS:
        return value
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        if "/" in value and "has host bits set" in str(exc):
            raise ValueError(f"{value!r} has host bits set (did you mean the network?)") from None
        raise ValueError(f'{value!r} is not a subnet (CIDR) or "{DYNAMIC_TS}"') from None


def parse_proposal(value: str, *, esp: bool) -> str:
    """Syntax check of a strongSwan proposal string ("aes256gcm16-prfsha384-x25519").

    The algorithm names themselves are checked by the IKE engine's proposal parser when it
    is available (see `proposal_checker`); this keeps the config layer usable alone.
    """
    text = value.strip().lower()
    if not text:
        raise ValueError("empty proposal")
    if text == "default":
        return text
    tokens = text.split("-")
    for token in tokens:
        if not token or not _PROPOSAL_TOKEN_RE.match(token):
            raise ValueError(f'{value!r} is not a proposal like "aes256gcm16-prfsha384-x25519"')
    checker = proposal_checker(esp)
    if checker is not None:
        checker(text)
    return text


def expand_default(proposals: tuple[str, ...], default: tuple[str, ...]) -> tuple[str, ...]:
    """Replace the keyword "default" by the default proposals, keeping order, no repeats."""
    out: list[str] = []
    for text in proposals:
        for item in default if text == "default" else (text,):
            if item not in out:
                out.append(item)
    return tuple(out)


def proposal_checker(esp: bool) -> Callable[[str], object] | None:
    """The engine's own proposal parser, so the config accepts exactly what IKE can do."""
    try:
        from ike.constants import ProtocolId
        from ike.errors import LocalError
        from ike.proposals import parse_proposal as ike_parse_proposal
    except ImportError:  # config checks stay usable without the engine
        return None
    protocol = ProtocolId.ESP if esp else ProtocolId.IKE

    def check(text: str) -> object:
        try:
            return ike_parse_proposal(text, protocol)
        except LocalError as exc:
            raise ValueError(str(exc)) from None

    return check


def parse_listen(value: str) -> tuple[str, int] | None:
    """`host`, `host:port`, `[v6]:port` or "off"/"" for no listener."""
    text = value.strip()
    if text in ("", "off", "no", "none"):
        return None
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"{value!r}: missing ']' after the IPv6 address")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"{value!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IP address") from None
    port = DEFAULT_METRICS_PORT
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"{value!r}: {port_text!r} is not a port number (1-65535)")
        port = int(port_text)
    return host, port


def type_name(value: object) -> str:
    """A TOML value's type in words, for messages ("expected a string, got an integer")."""
    return {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "a table",
    }.get(type(value), type(value).__name__)
