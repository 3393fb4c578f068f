"""EAP-MSCHAPv2: the MS-CHAPv2 computations of RFC 2759 §8, the MPPE keys of RFC 3079 §3,
and the EAP encapsulation Microsoft, strongSwan and FreeRADIUS speak
(draft-kamath-pppext-eap-mschapv2-02), as two small state machines.

Type-Data of EAP Type 26 (MS-Length counts from OpCode on: EAP Length - 5):

    | OpCode | MS-CHAPv2-ID | MS-Length (2) | ...
    Challenge (1, server): Value-Size=16 | Challenge (16) | Name
    Response  (2, peer):   Value-Size=49 | Peer-Challenge (16) | Reserved (8) |
                           NT-Response (24) | Flags (1) | Name
    Success   (3): server "S=<40 hex> M=<text>"; the peer answers with the OpCode alone
    Failure   (4): server "E=691 R=0 C=<32 hex> V=3 M=<text>"; the peer answers OpCode 4

The MSK is MasterReceiveKey | MasterSendKey (the authenticator's view, RFC 3079 §3.4),
padded with 32 zero octets to the 64 octets RFC 3748 §7.10 asks for: what strongSwan's
eap-mschapv2 derives, and MS-MPPE-Recv-Key | MS-MPPE-Send-Key from a RADIUS server.

Passwords are kept as their NT hash (MD4 of the UTF-16LE password, RFC 2759 §8.3) only.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
from collections.abc import Callable
from enum import Enum, auto

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from ike.eap.errors import EapDecodeError, EapFailure
from ike.eap.md4 import md4
from ike.eap.method import Done, RandomSource
from ike.eap.packet import EapType

OP_CHALLENGE = 1
OP_RESPONSE = 2
OP_SUCCESS = 3
OP_FAILURE = 4
OP_CHANGE_PASSWORD = 7

CHALLENGE_LEN = 16
RESPONSE_LEN = 49  # Peer-Challenge | Reserved | NT-Response | Flags
MSK_LEN = 64
ERROR_AUTHENTICATION_FAILURE = 691
_HEAD = struct.Struct("!BBHB")  # OpCode, MS-CHAPv2-ID, MS-Length, Value-Size
_SUCCESS_RE = re.compile(rb"^S=([0-9A-Fa-f]{40})(?: M=(.*))?$", re.S)


# --------------------------------------------------------------------------- RFC 2759 §8


def nt_password_hash(password: str) -> bytes:
    """NtPasswordHash (§8.3): MD4 of the password in UTF-16LE."""
    return md4(password.encode("utf-16-le"))


def hash_nt_password_hash(password_hash: bytes) -> bytes:
    """HashNtPasswordHash (§8.4)."""
    return md4(password_hash)


def user_name_for_hash(name: bytes) -> bytes:
    """The user name ChallengeHash uses: without a prepended "DOMAIN\\" (§8.2)."""
    return name.split(b"\\", 1)[1] if b"\\" in name else name


def challenge_hash(
    peer_challenge: bytes, authenticator_challenge: bytes, user_name: bytes
) -> bytes:
    """ChallengeHash (§8.2): the first 8 octets of SHA1(PeerChallenge | AuthChallenge | name)."""
    digest = hashlib.sha1(
        peer_challenge + authenticator_challenge + user_name_for_hash(user_name)
    ).digest()
    return digest[:8]


def _des_key(key7: bytes) -> bytes:
    """Spread 56 key bits over 8 octets (the low bit of each is DES parity, ignored)."""
    bits = int.from_bytes(key7, "big")
    return bytes(((bits >> (49 - 7 * i)) & 0x7F) << 1 for i in range(8))


def _des_encrypt(clear: bytes, key7: bytes) -> bytes:
    """DesEncrypt (§8.6): single DES-ECB, as Triple-DES with the key repeated."""
    enc = Cipher(TripleDES(_des_key(key7) * 3), modes.ECB()).encryptor()
    return enc.update(clear) + enc.finalize()


def challenge_response(challenge: bytes, password_hash: bytes) -> bytes:
    """ChallengeResponse (§8.5): the 8-octet challenge DES-encrypted under the three 7-octet
    thirds of the zero-padded password hash."""
    z = password_hash.ljust(21, b"\x00")
    return b"".join(_des_encrypt(challenge, z[i : i + 7]) for i in (0, 7, 14))


def generate_nt_response(
    authenticator_challenge: bytes, peer_challenge: bytes, user_name: bytes, password_hash: bytes
) -> bytes:
    """GenerateNTResponse (§8.1), from the password's NT hash."""
    return challenge_response(
        challenge_hash(peer_challenge, authenticator_challenge, user_name), password_hash
    )


_MAGIC1 = b"Magic server to client signing constant"
_MAGIC2 = b"Pad to make it do more than one iteration"


def authenticator_response(
    password_hash: bytes,
    nt_response: bytes,
    peer_challenge: bytes,
    authenticator_challenge: bytes,
    user_name: bytes,
) -> bytes:
    """GenerateAuthenticatorResponse (§8.7): b"S=" and 40 upper-case hex digits."""
    digest = hashlib.sha1(hash_nt_password_hash(password_hash) + nt_response + _MAGIC1).digest()
    chal = challenge_hash(peer_challenge, authenticator_challenge, user_name)
    digest = hashlib.sha1(digest + chal + _MAGIC2).digest()
    return b"S=" + digest.hex().upper().encode()


# --------------------------------------------------------------------------- RFC 3079 §3.4

_MASTER_MAGIC = b"This is the MPPE Master Key"
_SEND_MAGIC_CLIENT = (
    b"On the client side, this is the send key; on the server side, it is the receive key."
)
_RECV_MAGIC_CLIENT = (
    b"On the client side, this is the receive key; on the server side, it is the send key."
)
_SHS_PAD1 = b"\x00" * 40
_SHS_PAD2 = b"\xf2" * 40


def master_key(password_hash: bytes, nt_response: bytes) -> bytes:
    """GetMasterKey (§3.4): 16 octets from the password hash's hash and the NT-Response."""
    return hashlib.sha1(
        hash_nt_password_hash(password_hash) + nt_response + _MASTER_MAGIC
    ).digest()[:16]


def asymmetric_start_key(master: bytes, *, send: bool, server: bool) -> bytes:
    """GetAsymmetricStartKey (§3.4) for 128-bit keys."""
    client_send = send != server  # the client's send key is the server's receive key
    magic = _SEND_MAGIC_CLIENT if client_send else _RECV_MAGIC_CLIENT
    return hashlib.sha1(master + _SHS_PAD1 + magic + _SHS_PAD2).digest()[:16]


def msk(password_hash: bytes, nt_response: bytes) -> bytes:
    """MSK = MasterReceiveKey | MasterSendKey (authenticator's view) | 32 zero octets."""
    master = master_key(password_hash, nt_response)
    receive = asymmetric_start_key(master, send=False, server=True)
    send = asymmetric_start_key(master, send=True, server=True)
    return receive + send + bytes(MSK_LEN - 32)


# --------------------------------------------------------------------------- wire


def _pack(opcode: int, ms_id: int, body: bytes) -> bytes:
    return struct.pack("!BBH", opcode, ms_id, 4 + len(body)) + body


def _unpack(data: bytes) -> tuple[int, int, bytes]:
    """(OpCode, MS-CHAPv2-ID, the rest) of a Challenge/Response/Success/Failure request;
    MS-Length must cover exactly the Type-Data."""
    if len(data) < 4:
        raise EapDecodeError(f"EAP-MSCHAPv2 message of {len(data)} bytes")
    opcode, ms_id, ms_length = struct.unpack_from("!BBH", data)
    if ms_length != len(data):
        raise EapDecodeError(f"EAP-MSCHAPv2 MS-Length {ms_length} but {len(data)} bytes")
    return opcode, ms_id, data[4:]


def _value(body: bytes, size: int, what: str) -> tuple[bytes, bytes]:
    if not body or body[0] != size or len(body) < 1 + size:
        raise EapDecodeError(f"EAP-MSCHAPv2 {what} without a {size}-octet value")
    return body[1 : 1 + size], body[1 + size :]


def parse_failure(text: bytes) -> dict[str, str]:
    """The fields of a Failure message (RFC 2759 §6): E, R, C, V and M."""
    fields: dict[str, str] = {}
    head, _, message = text.partition(b" M=")
    for part in head.split():
        key, sep, value = part.partition(b"=")
        if sep:
            fields[key.decode("ascii", "replace")] = value.decode("ascii", "replace")
    if message:
        fields["M"] = message.decode("utf-8", "replace")
    return fields


# --------------------------------------------------------------------------- authenticator

NtHashLookup = Callable[[bytes], "bytes | None"]
"""The NT password hash (16 octets) of a user name, or None for an unknown user."""


class _ServerState(Enum):
    CHALLENGE_SENT = auto()
    SUCCESS_SENT = auto()
    FAILURE_SENT = auto()
    DONE = auto()


class MschapV2Server:
    """The authenticator's side. `identity` is the peer's EAP identity: the MS-CHAPv2
    Name must equal it (a peer cannot prove one name and be taken for another)."""

    type = EapType.MSCHAPV2

    def __init__(
        self,
        identity: bytes,
        lookup: NtHashLookup,
        *,
        name: bytes = b"gateway",
        random: RandomSource = os.urandom,
        ms_id: int | None = None,
    ) -> None:
        self.identity = identity
        self._lookup = lookup
        self._name = name
        self._random = random
        self._challenge = random(CHALLENGE_LEN)
        self._ms_id = random(1)[0] if ms_id is None else ms_id
        self._state = _ServerState.CHALLENGE_SENT
        self.msk: bytes | None = None
        self._reason = ""

    @property
    def failure_pending(self) -> str | None:
        return self._reason if self._state is _ServerState.FAILURE_SENT else None

    def start(self) -> bytes:
        body = bytes((CHALLENGE_LEN,)) + self._challenge + self._name
        return _pack(OP_CHALLENGE, self._ms_id, body)

    def process(self, data: bytes) -> bytes | Done:
        try:
            return self._process(data)
        except EapDecodeError as exc:
            self._state = _ServerState.DONE
            return Done(False, f"EAP-MSCHAPv2: {exc}")

    def _process(self, data: bytes) -> bytes | Done:
        state = self._state
        if state is _ServerState.CHALLENGE_SENT:
            return self._on_response(data)
        if not data:
            raise EapDecodeError("empty EAP-MSCHAPv2 response")
        opcode = data[0]
        self._state = _ServerState.DONE
        if state is _ServerState.SUCCESS_SENT and opcode == OP_SUCCESS:
            return Done(True, "")
        if state is _ServerState.FAILURE_SENT and opcode == OP_FAILURE:
            return Done(False, self._reason)
        return Done(False, f"EAP-MSCHAPv2: unexpected OpCode {opcode} in state {state.name}")

    def _on_response(self, data: bytes) -> bytes | Done:
        opcode, ms_id, body = _unpack(data)
        if opcode != OP_RESPONSE:
            raise EapDecodeError(f"expected a Response, got OpCode {opcode}")
        if ms_id != self._ms_id:
            raise EapDecodeError(f"Response for MS-CHAPv2-ID {ms_id}, not {self._ms_id}")
        value, name = _value(body, RESPONSE_LEN, "Response")
        peer_challenge, nt_response = value[:16], value[24:48]
        shown = name.decode("utf-8", "replace")
        if name != self.identity:
            self._state = _ServerState.DONE
            return Done(False, f"EAP-MSCHAPv2 name {shown!r} is not the EAP identity")
        password_hash = self._lookup(name)
        if password_hash is None or not hmac.compare_digest(
            generate_nt_response(self._challenge, peer_challenge, name, password_hash), nt_response
        ):
            # RFC 2759 §6: E=691 (authentication failure), no retry; a fresh challenge C.
            self._reason = (
                f"EAP-MSCHAPv2: no secret for {shown!r}"
                if password_hash is None
                else f"EAP-MSCHAPv2: wrong password for {shown!r}"
            )
            self._state = _ServerState.FAILURE_SENT
            text = (
                f"E={ERROR_AUTHENTICATION_FAILURE} R=0 C={self._random(16).hex().upper()} V=3 "
                "M=Authentication failed"
            ).encode()
            return _pack(OP_FAILURE, self._ms_id, text)
        self.msk = msk(password_hash, nt_response)
        auth = authenticator_response(
            password_hash, nt_response, peer_challenge, self._challenge, name
        )
        self._state = _ServerState.SUCCESS_SENT
        return _pack(OP_SUCCESS, self._ms_id, auth + b" M=Welcome")


# --------------------------------------------------------------------------- peer


class MschapV2Peer:
    """The peer's side: answers the Challenge, checks the authenticator's "S=" response
    (mutual authentication) and derives the MSK. `name` is the user name sent (our EAP
    identity); the password is held as its NT hash only."""

    type = EapType.MSCHAPV2

    def __init__(self, name: bytes, password_hash: bytes, *, random: RandomSource = os.urandom):
        self._name = name
        self._password_hash = password_hash
        self._random = random
        self._expected: bytes | None = None
        self._nt_response = b""
        self.msk: bytes | None = None
        self.succeeded = False  # the authenticator proved it knows the password
        self.failure: str | None = None

    def process(self, data: bytes) -> bytes:
        opcode, ms_id, body = _unpack(data)
        if opcode == OP_CHALLENGE:
            if self._expected is not None:
                raise EapFailure("EAP-MSCHAPv2: a second Challenge")
            challenge, _server_name = _value(body, CHALLENGE_LEN, "Challenge")
            peer_challenge = self._random(CHALLENGE_LEN)
            nt = generate_nt_response(challenge, peer_challenge, self._name, self._password_hash)
            self._nt_response = nt
            self._expected = authenticator_response(
                self._password_hash, nt, peer_challenge, challenge, self._name
            )
            value = peer_challenge + bytes(8) + nt + b"\x00"
            return _pack(OP_RESPONSE, ms_id, bytes((RESPONSE_LEN,)) + value + self._name)
        if opcode == OP_SUCCESS:
            m = _SUCCESS_RE.match(body)
            if self._expected is None or m is None:
                raise EapFailure("EAP-MSCHAPv2: Success without a valid authenticator response")
            if not hmac.compare_digest(b"S=" + m.group(1).upper(), self._expected):
                raise EapFailure("EAP-MSCHAPv2: the authenticator response does not verify")
            self.succeeded = True
            self.msk = msk(self._password_hash, self._nt_response)
            return bytes((OP_SUCCESS,))
        if opcode == OP_FAILURE:
            fields = parse_failure(body)
            self.failure = f"EAP-MSCHAPv2: the server refused (E={fields.get('E', '?')})"
            return bytes((OP_FAILURE,))
        raise EapFailure(f"EAP-MSCHAPv2: unsupported OpCode {opcode}")
