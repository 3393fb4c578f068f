"""EAP-TLS (RFC 5216; TLS 1.3 per RFC 9190): both sides over an in-memory TLS engine.

TLS runs in OpenSSL through pyOpenSSL over memory BIOs (Python's ssl module has no
keying-material exporter, RFC 5705, which the MSK needs). Nothing here touches a socket.

Type-Data (RFC 5216 §3.1):  | Flags | [TLS Message Length (4), if L] | [TLS data] |
with L (0x80) length included, M (0x40) more fragments, S (0x20) start. A message longer
than `fragment_size` goes out in fragments: the first carries L and the total length,
all but the last carry M, and the receiver acknowledges each with an empty EAP-TLS
message (§2.1.5). Reassembly stops at MAX_MESSAGE bytes.

Certificates: OpenSSL is told to accept whatever chain arrives (its own checks would use
the wall clock); as soon as the handshake has produced the peer's certificate (and
verified the peer's signature over the handshake), the chain is checked with the
project's path validation (ike.pki.x509.validate_chain: the configured CAs and CRLs, validity
at the `now` the caller passes, keyUsage) and by an optional identity check. A chain that
fails ends the conversation before we send another flight.

Ends of the conversation:
- TLS 1.2: the server's ChangeCipherSpec/Finished reach the peer, which answers with an
  empty EAP-TLS Response; the server then sends EAP-Success.
- TLS 1.3 (RFC 9190 §2.1.1): after the peer's Finished the server sends the one-octet
  application-data "commitment message" 0x00; the peer answers with an empty Response.
- A TLS error produces an alert: the side that fails sends it in an EAP-TLS message and
  the server ends with EAP-Failure (§2.1.3).

MSK (the first 64 of 128 exported octets; the second 64 are the EMSK):
- TLS 1.2: TLS-PRF(master_secret, "client EAP encryption", client.random | server.random)
  (RFC 5216 §2.3), i.e. the RFC 5705 exporter with that label and no context;
- TLS 1.3: TLS-Exporter("EXPORTER_EAP_TLS_Key_Material", 0x0D, 128) (RFC 9190 §2.3).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, auto

from cryptography import x509
from OpenSSL import SSL

from ike.eap.errors import EapDecodeError, EapFailure
from ike.eap.method import Done
from ike.eap.packet import EapType
from ike.errors import AuthFailure, LocalError
from ike.pki.x509 import LocalCredential, TrustAnchors, validate_chain

FLAG_L = 0x80
FLAG_M = 0x40
FLAG_S = 0x20
DEFAULT_FRAGMENT_SIZE = 1024
MAX_MESSAGE = 256 * 1024  # a whole flight; long certificate chains stay far below
MSK_LEN = 64
_TLS12_LABEL = b"client EAP encryption"
_TLS13_LABEL = b"EXPORTER_EAP_TLS_Key_Material"
_TLS13_CONTEXT = bytes((EapType.TLS,))
_COMMITMENT = b"\x00"
_LENGTH = struct.Struct("!I")
_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}
_TLS1_3 = 0x0304

CertificateCheck = Callable[[x509.Certificate], bool]
"""Does the peer's (end-entity) certificate belong to who we expect? (e.g. the EAP or IKE
identity in its subjectAltName, see ike.auth.id_in_certificate)."""


# --------------------------------------------------------------------------- wire


@dataclass(frozen=True, slots=True)
class TlsMessage:
    flags: int
    data: bytes = b""
    length: int | None = None  # the TLS Message Length when L is set

    @property
    def is_ack(self) -> bool:
        return not self.data and not self.flags & (FLAG_S | FLAG_M)


def decode_tls(data: bytes) -> TlsMessage:
    if not data:
        raise EapDecodeError("EAP-TLS message without Flags")
    flags = data[0]
    if flags & FLAG_L:
        if len(data) < 5:
            raise EapDecodeError("EAP-TLS L flag without a TLS Message Length")
        (length,) = _LENGTH.unpack_from(data, 1)
        if length > MAX_MESSAGE:
            raise EapDecodeError(f"EAP-TLS message of {length} bytes (at most {MAX_MESSAGE})")
        return TlsMessage(flags, bytes(data[5:]), length)
    return TlsMessage(flags, bytes(data[1:]))


def encode_tls(m: TlsMessage) -> bytes:
    if m.length is None:
        return bytes((m.flags & ~FLAG_L,)) + m.data
    return bytes((m.flags | FLAG_L,)) + _LENGTH.pack(m.length) + m.data


ACK = encode_tls(TlsMessage(0))


class _Fragments:
    """Outgoing fragmentation and incoming reassembly of one side."""

    def __init__(self, fragment_size: int) -> None:
        if fragment_size < 64:
            raise LocalError(f"EAP-TLS fragment_size {fragment_size} is below 64 bytes")
        self._size = fragment_size
        self._out = b""
        self._sent = 0
        self._in = bytearray()
        self._in_total: int | None = None

    @property
    def sending(self) -> bool:
        """A fragmented message is under way: the other side owes acknowledgements."""
        return 0 < self._sent < len(self._out)

    def send(self, data: bytes) -> bytes:
        """Queue one TLS message; its first (or only) EAP-TLS Type-Data."""
        self._out, self._sent = data, 0
        return self.next()

    def next(self) -> bytes:
        chunk = self._out[self._sent : self._sent + self._size]
        first = self._sent == 0
        self._sent += len(chunk)
        more = self._sent < len(self._out)
        flags = FLAG_M if more else 0
        length = len(self._out) if first and more else None
        return encode_tls(TlsMessage(flags, chunk, length))

    def receive(self, m: TlsMessage) -> bytes | None:
        """A fragment in; the whole message once its last fragment arrived, else None."""
        if m.length is not None:
            # FreeRADIUS repeats L in every fragment: fine when it repeats the same total
            if self._in and m.length != self._in_total:
                raise EapDecodeError(
                    f"EAP-TLS fragment announces {m.length} bytes, the first said {self._in_total}"
                )
            self._in_total = m.length
        self._in += m.data
        limit = self._in_total if self._in_total is not None else MAX_MESSAGE
        if len(self._in) > limit:
            raise EapDecodeError(f"EAP-TLS fragments exceed {limit} bytes")
        if m.flags & FLAG_M:
            return None
        whole = bytes(self._in)
        if self._in_total is not None and len(whole) != self._in_total:
            raise EapDecodeError(
                f"EAP-TLS message of {len(whole)} bytes, its L field said {self._in_total}"
            )
        self._in.clear()
        self._in_total = None
        return whole


# --------------------------------------------------------------------------- TLS engine


class EapTlsConfig:
    """Our certificate and key, and what the peer's chain must lead to. Build once per
    configuration; every conversation makes its own TLS connection from it."""

    def __init__(
        self,
        credential: LocalCredential,
        trust: TrustAnchors,
        *,
        min_version: str = "1.2",
        max_version: str = "1.3",
    ) -> None:
        for v in (min_version, max_version):
            if v not in _VERSIONS:
                raise LocalError(f"TLS version {v!r}: use 1.2 or 1.3")
        if _VERSIONS[min_version] > _VERSIONS[max_version]:
            raise LocalError(f"TLS min_version {min_version} above max_version {max_version}")
        self.trust = trust
        ctx = SSL.Context(SSL.TLS_METHOD)
        ctx.set_min_proto_version(_VERSIONS[min_version])
        ctx.set_max_proto_version(_VERSIONS[max_version])
        # no resumption: every EAP-TLS conversation is a full handshake with certificates
        ctx.set_options(SSL.OP_NO_TICKET)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        try:
            ctx.use_certificate(credential.certs[0])
            for extra in credential.certs[1:]:
                ctx.add_extra_chain_cert(extra)  # type: ignore[arg-type]
            ctx.use_privatekey(credential.key)
            ctx.check_privatekey()
        except SSL.Error as exc:
            raise LocalError(f"EAP-TLS credential unusable: {_reason(exc)}") from None
        # Accept any chain inside OpenSSL; _Tls.check_peer validates it (see above).
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _accept_for_now)
        self.context = ctx


def _accept_for_now(*_args: object) -> bool:
    return True


def _reason(exc: SSL.Error) -> str:
    parts = (
        [str(e[2]) for e in exc.args[0] if isinstance(e, tuple) and len(e) == 3]
        if (exc.args and isinstance(exc.args[0], list))
        else []
    )
    return "; ".join(parts) or str(exc) or type(exc).__name__


class _TlsAlert(Exception):
    """The TLS engine failed; `alert` is what it wants to tell the other side."""

    def __init__(self, reason: str, alert: bytes) -> None:
        super().__init__(reason)
        self.alert = alert


class _Tls:
    """One TLS connection over memory BIOs, plus the chain check."""

    def __init__(
        self, config: EapTlsConfig, *, server: bool, now: float, check: CertificateCheck | None
    ) -> None:
        self._conn = SSL.Connection(config.context)
        if server:
            self._conn.set_accept_state()
        else:
            self._conn.set_connect_state()
        self._trust = config.trust
        self._now = now
        self._check = check
        self.peer_certificate: x509.Certificate | None = None
        self.established = False

    def drain(self) -> bytes:
        out = b""
        while True:
            try:
                chunk = self._conn.bio_read(65536)
            except SSL.WantReadError:
                return out
            if not chunk:
                return out
            out += chunk

    def handshake(self, data: bytes) -> bytes:
        """Feed the peer's bytes; our bytes out. _TlsAlert on a TLS error, EapFailure on a
        chain that does not validate (then nothing more goes out)."""
        if data:
            self._conn.bio_write(data)
        try:
            self._conn.do_handshake()
            self.established = True
        except SSL.WantReadError:
            pass
        except SSL.Error as exc:
            raise _TlsAlert(f"EAP-TLS handshake failed: {_reason(exc)}", self.drain()) from None
        self.check_peer()
        return self.drain()

    def check_peer(self) -> None:
        if self.peer_certificate is not None:
            return
        ee = self._conn.get_peer_certificate(as_cryptography=True)
        if ee is None:
            if self.established:
                raise EapFailure("EAP-TLS: the peer sent no certificate")
            return
        ee_der = ee.tbs_certificate_bytes
        chain = self._conn.get_peer_cert_chain(as_cryptography=True) or []
        intermediates = [c for c in chain if c.tbs_certificate_bytes != ee_der]
        try:
            validate_chain(self._trust, ee, intermediates, self._now)
        except AuthFailure as exc:
            raise EapFailure(f"EAP-TLS: {exc}") from None
        if self._check is not None and not self._check(ee):
            subject = ee.subject.rfc4514_string()
            raise EapFailure(f"EAP-TLS: certificate {subject!r} is not the expected identity")
        self.peer_certificate = ee

    def send_application_data(self, data: bytes) -> bytes:
        self._conn.send(data)
        return self.drain()

    def receive_application_data(self, data: bytes) -> bytes | None:
        """Decrypt what arrived; None while no application data is complete."""
        self._conn.bio_write(data)
        try:
            return self._conn.recv(65536)
        except SSL.WantReadError:
            return None
        except (SSL.ZeroReturnError, SSL.Error) as exc:
            raise EapFailure(f"EAP-TLS: {_reason(exc)}") from None

    @property
    def tls13(self) -> bool:
        return self._conn.get_protocol_version() >= _TLS1_3

    @property
    def version(self) -> str:
        return self._conn.get_protocol_version_name()

    def msk(self) -> bytes:
        if self.tls13:
            material = self._conn.export_keying_material(_TLS13_LABEL, 128, _TLS13_CONTEXT)
        else:
            material = self._conn.export_keying_material(_TLS12_LABEL, 128)
        return material[:MSK_LEN]


class _Endpoint:
    """What both sides share: the TLS connection and the L/M/S fragment exchange."""

    type = EapType.TLS

    def __init__(
        self,
        config: EapTlsConfig,
        *,
        server: bool,
        now: float,
        check: CertificateCheck | None,
        fragment_size: int,
    ) -> None:
        self._tls = _Tls(config, server=server, now=now, check=check)
        self._frag = _Fragments(fragment_size)
        self.msk: bytes | None = None

    @property
    def peer_certificate(self) -> x509.Certificate | None:
        return self._tls.peer_certificate

    @property
    def tls_version(self) -> str:
        return self._tls.version

    def _exchange(self, m: TlsMessage) -> tuple[bytes | None, bytes | None]:
        """(Type-Data to send, None) while fragments travel either way; (None, the whole
        TLS message) once the other side's message is complete."""
        if self._frag.sending:
            if not m.is_ack:
                raise EapDecodeError("data instead of a fragment acknowledgement")
            return self._frag.next(), None
        whole = self._frag.receive(m)
        if whole is None:
            return ACK, None
        return None, whole


# --------------------------------------------------------------------------- authenticator


class _ServerState(Enum):
    HANDSHAKE = auto()
    FINAL_SENT = auto()  # our last flight is out; the peer's empty Response ends it
    ALERT_SENT = auto()
    DONE = auto()


class EapTlsServer(_Endpoint):
    """The authenticator's side. `peer_check` checks the client certificate's identity."""

    def __init__(
        self,
        config: EapTlsConfig,
        *,
        now: float,
        peer_check: CertificateCheck | None = None,
        fragment_size: int = DEFAULT_FRAGMENT_SIZE,
    ) -> None:
        super().__init__(
            config, server=True, now=now, check=peer_check, fragment_size=fragment_size
        )
        self._state = _ServerState.HANDSHAKE
        self._msk: bytes | None = None
        self._reason = ""

    @property
    def failure_pending(self) -> str | None:
        return self._reason if self._state is _ServerState.ALERT_SENT else None

    def start(self) -> bytes:
        return encode_tls(TlsMessage(FLAG_S))

    def process(self, data: bytes) -> bytes | Done:
        try:
            return self._process(data)
        except (EapDecodeError, EapFailure) as exc:
            self._state = _ServerState.DONE
            return Done(False, str(exc) if isinstance(exc, EapFailure) else f"EAP-TLS: {exc}")

    def _process(self, data: bytes) -> bytes | Done:
        if self._state is _ServerState.DONE:
            raise EapFailure("EAP-TLS: the method is over")
        send, whole = self._exchange(decode_tls(data))
        if whole is None:
            assert send is not None
            return send
        if self._state is _ServerState.ALERT_SENT:
            self._state = _ServerState.DONE
            return Done(False, self._reason)
        if self._state is _ServerState.FINAL_SENT:
            if whole:
                raise EapDecodeError("data after the final TLS flight")
            self._state = _ServerState.DONE
            self.msk = self._msk
            return Done(True)
        if not whole:
            raise EapDecodeError("an empty EAP-TLS Response during the handshake")
        try:
            out = self._tls.handshake(whole)
        except _TlsAlert as exc:
            if not exc.alert:
                raise EapFailure(str(exc)) from None
            self._reason = str(exc)
            self._state = _ServerState.ALERT_SENT
            return self._frag.send(exc.alert)
        if self._tls.established:
            if self._tls.tls13:
                out += self._tls.send_application_data(_COMMITMENT)
            self._msk = self._tls.msk()
            self._state = _ServerState.FINAL_SENT
        if not out:
            raise EapDecodeError("the TLS handshake produced nothing to send")
        return self._frag.send(out)


# --------------------------------------------------------------------------- peer


class EapTlsPeer(_Endpoint):
    """The peer's side. `server_check` checks the server certificate's identity."""

    def __init__(
        self,
        config: EapTlsConfig,
        *,
        now: float,
        server_check: CertificateCheck | None = None,
        fragment_size: int = DEFAULT_FRAGMENT_SIZE,
    ) -> None:
        super().__init__(
            config, server=False, now=now, check=server_check, fragment_size=fragment_size
        )
        self._started = False
        self.succeeded = False
        self.failure: str | None = None

    def process(self, data: bytes) -> bytes:
        m = decode_tls(data)
        if self.succeeded or self.failure is not None:
            raise EapFailure("EAP-TLS: a Request after the method ended")
        if not self._started:
            if not m.flags & FLAG_S:
                raise EapFailure("EAP-TLS: the first Request lacks the Start flag")
            self._started = True
            return self._frag.send(self._tls.handshake(b""))
        send, whole = self._exchange(m)
        if whole is None:
            assert send is not None
            return send
        if not whole:
            raise EapDecodeError("an empty EAP-TLS Request")
        if self._tls.established:
            return self._commitment(whole)
        try:
            out = self._tls.handshake(whole)
        except _TlsAlert as exc:
            # our alert (or, after the server's alert, an acknowledgement) lets the server
            # end with EAP-Failure (RFC 5216 §2.1.3)
            self.failure = str(exc)
            return self._frag.send(exc.alert) if exc.alert else ACK
        if self._tls.established and not self._tls.tls13:
            # TLS 1.2: the server's Finished arrived; acknowledge and accept Success
            self._succeed()
            return ACK
        if not out:
            raise EapDecodeError("the TLS handshake produced nothing to send")
        return self._frag.send(out)

    def _commitment(self, data: bytes) -> bytes:
        """TLS 1.3: wait for the server's commitment message 0x00 (RFC 9190 §2.1.1)."""
        if not self._tls.tls13:
            raise EapDecodeError("TLS data after the TLS 1.2 handshake ended")
        try:
            app = self._tls.receive_application_data(data)
        except EapFailure as exc:  # e.g. the server's alert refusing our certificate
            self.failure = str(exc)
            return ACK
        if app is None:
            return ACK  # e.g. only session tickets so far
        if app != _COMMITMENT:
            raise EapFailure("EAP-TLS: application data other than the commitment message")
        self._succeed()
        return ACK

    def _succeed(self) -> None:
        self._tls.check_peer()
        if self._tls.peer_certificate is None:
            raise EapFailure("EAP-TLS: the server sent no certificate")
        self.msk = self._tls.msk()
        self.succeeded = True
