"""The users of local EAP authentication: a TOML file in the shape of swanctl.conf's
`secrets` section, read with the permission checks of PSK files.

    # /etc/gateway/eap-secrets.toml   (owner root, mode 0600)
    [secrets.eap-alice]            # swanctl: secrets { eap-alice { ... } }
    id = "alice"                   # or id = ["alice", "alice@example.org"]; id1, id2 too
    secret = "correct horse battery"

    [secrets.ntlm-bob]             # the NT hash instead of the password (swanctl ntlm-)
    id = "bob"
    secret = "0x8846f7eaee8fb117ad06bdd830b7586c"

A `secret` is text, or bytes written as "0x<hex>" or "0s<base64>" (swanctl's prefixes);
an eap- password must be UTF-8 (MS-CHAPv2 hashes its UTF-16 form), an ntlm- secret is
the 16-octet NT hash. Every identity appears once. Problems are reported all at once as
a ConfigError with key paths and lines, never with a secret in the message. Only NT hashes
and the passwords (for methods that need them) are kept, in objects whose repr hides them.

`parse_eap_secrets(text, source)` is pure; `load_eap_secrets(path)` adds the file checks
(`check_secret_file`, the same rules as `psk_file`: a regular file owned by root or us,
no group/other access).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.config.issues import ConfigError, ConfigIssue, key_lines, toml_table
from gateway.secretfile import check_secret_file
from ike.eap.mschapv2 import nt_password_hash

NT_HASH_LEN = 16
_PREFIXES = ("eap-", "ntlm-")


@dataclass(frozen=True, slots=True)
class EapUser:
    name: str  # the section, e.g. "eap-alice"
    ids: tuple[str, ...]
    nt_hash: bytes = field(repr=False)
    password: bytes | None = field(default=None, repr=False)  # None for ntlm- entries


@dataclass(frozen=True, slots=True)
class EapSecrets:
    users: tuple[EapUser, ...] = ()
    _by_id: Mapping[bytes, EapUser] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self._by_id:
            index = {i.encode(): u for u in self.users for i in u.ids}
            object.__setattr__(self, "_by_id", index)

    def user(self, identity: bytes) -> EapUser | None:
        return self._by_id.get(identity)

    def nt_hash(self, identity: bytes) -> bytes | None:
        """The lookup EAP-MSCHAPv2's authenticator takes (ike.eap.mschapv2.NtHashLookup)."""
        user = self._by_id.get(identity)
        return user.nt_hash if user is not None else None


def _decode_secret(text: str) -> bytes:
    """swanctl's forms: 0x<hex>, 0s<base64>, else the text itself (UTF-8)."""
    if text.startswith("0x"):
        try:
            return bytes.fromhex(text[2:])
        except ValueError:
            raise ValueError("0x... is not hexadecimal") from None
    if text.startswith("0s"):
        try:
            return base64.b64decode(text[2:], validate=True)
        except binascii.Error:
            raise ValueError("0s... is not base64") from None
    return text.encode()


class _Issues:
    def __init__(self, text: str) -> None:
        self.lines = key_lines(text)
        self.items: list[ConfigIssue] = []

    def add(self, path: tuple[str, ...], message: str) -> None:
        line = None
        keys = path
        while keys and line is None:
            line = self.lines.get(keys)
            keys = keys[:-1]
        self.items.append(ConfigIssue(".".join(path), message, line))


def _ids(section: dict[str, Any], path: tuple[str, ...], issues: _Issues) -> list[str]:
    ids: list[str] = []
    for key, value in section.items():
        if not key.startswith("id"):
            continue
        values = value if isinstance(value, list) else [value]
        for v in values:
            if not isinstance(v, str) or not v:
                issues.add(path + (key,), "an identity is a non-empty string")
            else:
                ids.append(v)
    if not ids:
        issues.add(path, 'needs id = "..." (the EAP identity)')
    return ids


def _user(name: str, section: Any, issues: _Issues) -> EapUser | None:
    path = ("secrets", name)
    if not isinstance(section, dict):
        issues.add(path, "expected a table")
        return None
    if not name.startswith(_PREFIXES):
        issues.add(path, "only eap-NAME and ntlm-NAME secrets belong in this file")
        return None
    for key in section:
        if key != "secret" and not key.startswith("id"):
            issues.add(path + (key,), "unknown key (id, id<suffix> and secret are known)")
    ids = _ids(section, path, issues)
    raw = section.get("secret")
    if not isinstance(raw, str) or not raw:
        issues.add(path + ("secret",), 'needs secret = "..." (a non-empty string)')
        return None
    try:
        secret = _decode_secret(raw)
    except ValueError as exc:
        issues.add(path + ("secret",), str(exc))
        return None
    if name.startswith("ntlm-"):
        if len(secret) != NT_HASH_LEN:
            issues.add(path + ("secret",), f"an NT hash has {NT_HASH_LEN} bytes, not {len(secret)}")
            return None
        return EapUser(name, tuple(ids), secret)
    try:
        password = secret.decode()
    except UnicodeDecodeError:
        issues.add(path + ("secret",), "an EAP password must be UTF-8 text")
        return None
    return EapUser(name, tuple(ids), nt_password_hash(password), secret)


def parse_eap_secrets(text: str, source: str) -> EapSecrets:
    """The users in `text` (the file's content); ConfigError listing every problem."""
    data = toml_table(text, source)
    issues = _Issues(text)
    for key in data:
        if key != "secrets":
            issues.add((key,), "unknown key (the file holds [secrets.eap-NAME] tables)")
    sections = data.get("secrets", {})
    users: list[EapUser] = []
    if not isinstance(sections, dict):
        issues.add(("secrets",), "expected a table")
        sections = {}
    seen: dict[str, str] = {}
    for name, section in sections.items():
        user = _user(name, section, issues)
        if user is None:
            continue
        for identity in user.ids:
            if identity in seen:
                issues.add(("secrets", name), f"id {identity!r} is also in {seen[identity]}")
            seen.setdefault(identity, name)
        users.append(user)
    if issues.items:
        in_file_order = sorted(issues.items, key=lambda i: (i.line is None, i.line or 0))
        raise ConfigError(source, in_file_order)
    return EapSecrets(tuple(users))


def load_eap_secrets(path: Path) -> EapSecrets:
    """Check the file like a PSK file, then read it."""
    try:
        check_secret_file(path, "EAP secrets")
        text = path.read_text()
    except UnicodeDecodeError:  # its message would quote a byte of the file
        raise ConfigError(str(path), [ConfigIssue("", "not UTF-8 text")]) from None
    except OSError as exc:
        raise ConfigError(str(path), [ConfigIssue("", exc.strerror or "unreadable")]) from None
    except ValueError as exc:
        raise ConfigError(str(path), [ConfigIssue("", str(exc))]) from None
    return parse_eap_secrets(text, str(path))
