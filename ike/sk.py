"""The Encrypted payload (SK, RFC 7296 §3.14; AEAD per RFC 5282 and RFC 7634).

An `SkCipher` holds one IKE SA's keys for both directions, built once when the keys are
derived. `protect` builds a whole encrypted message; `unprotect` checks and decrypts the
SK payload of a decoded message. A failed integrity check raises IntegrityError (a
DecodeError: the datagram is dropped and counted, never answered).
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Sequence

from ike import codec
from ike.constants import IKE_HEADER_LEN, PayloadType
from ike.crypto import AeadContext, InvalidTag, RandomSource, aead_context, cbc_decrypt, cbc_encrypt
from ike.errors import DecodeError
from ike.keys import IkeSaKeys
from ike.proposals import IkeSuite

_GENERIC = struct.Struct("!BBH")
_FRAGMENT = struct.Struct("!HH")  # Fragment Number, Total Fragments (RFC 7383 §2.5)


class IntegrityError(DecodeError):
    """The SK payload's ICV / AEAD tag did not verify."""


class SkCipher:
    __slots__ = (
        "_aead",
        "_random",
        "_iv_counter",
        "_out_key",
        "_in_key",
        "_out_salt",
        "_in_salt",
        "_out_integ",
        "_in_integ",
        "_suite",
        "_out_aead",
        "_in_aead",
    )

    def __init__(
        self, suite: IkeSuite, keys: IkeSaKeys, *, initiator: bool, random: RandomSource
    ) -> None:
        self._suite = suite
        self._random = random
        self._iv_counter = 0
        out_e, in_e = (keys.sk_ei, keys.sk_er) if initiator else (keys.sk_er, keys.sk_ei)
        out_a, in_a = (keys.sk_ai, keys.sk_ar) if initiator else (keys.sk_ar, keys.sk_ai)
        self._aead = suite.encr.aead
        self._out_key, self._in_key = out_e, in_e
        self._out_integ, self._in_integ = out_a, in_a
        self._out_aead: AeadContext | None = None
        self._in_aead: AeadContext | None = None
        self._out_salt = self._in_salt = b""
        if self._aead:
            self._out_aead = aead_context(suite.encr, out_e)
            self._in_aead = aead_context(suite.encr, in_e)
            self._out_salt, self._in_salt = out_e[-4:], in_e[-4:]

    def __repr__(self) -> str:
        return f"SkCipher({self._suite.name})"

    def protect(
        self,
        spi_i: bytes,
        spi_r: bytes,
        exchange_type: int,
        *,
        is_initiator: bool,
        is_response: bool,
        message_id: int,
        payloads: Sequence[codec.Payload],
    ) -> bytes:
        first, inner = codec.encode_payloads(list(payloads))
        iv, plain, body_len = self._plaintext(inner)
        header = codec.encode_header(
            spi_i,
            spi_r,
            PayloadType.SK,
            exchange_type,
            is_initiator=is_initiator,
            is_response=is_response,
            message_id=message_id,
            length=IKE_HEADER_LEN + 4 + body_len,
        ) + _GENERIC.pack(first, 0, 4 + body_len)
        return self._seal(header, iv, plain)

    def protect_fragments(
        self,
        spi_i: bytes,
        spi_r: bytes,
        exchange_type: int,
        *,
        is_initiator: bool,
        is_response: bool,
        message_id: int,
        payloads: Sequence[codec.Payload],
        max_size: int,
    ) -> list[bytes]:
        """The message as SKF fragments (RFC 7383 §2.5), each at most `max_size` bytes:
        the inner payloads split in order, every fragment encrypted and integrity
        protected on its own (header, SKF header, Fragment Number and Total Fragments are
        the associated data). Fragment 1 names the first inner payload, the others 0."""
        first, inner = codec.encode_payloads(list(payloads))
        encr = self._suite.encr
        icv = encr.icv_size if self._aead else self._suite.integ.icv_size  # type: ignore[union-attr]
        overhead = IKE_HEADER_LEN + 8 + encr.iv_size + icv + encr.block_size
        room = max_size - overhead
        if room < 64:
            raise ValueError(f"fragment size {max_size} leaves no room for data")
        chunks = [inner[i : i + room] for i in range(0, len(inner), room)] or [b""]
        total = len(chunks)
        out = []
        for number, chunk in enumerate(chunks, 1):
            iv, plain, body_len = self._plaintext(chunk)
            skf_len = 8 + body_len
            header = codec.encode_header(
                spi_i,
                spi_r,
                PayloadType.SKF,
                exchange_type,
                is_initiator=is_initiator,
                is_response=is_response,
                message_id=message_id,
                length=IKE_HEADER_LEN + skf_len,
            )
            skf = _GENERIC.pack(first if number == 1 else 0, 0, skf_len)
            aad = header + skf + _FRAGMENT.pack(number, total)
            out.append(self._seal(aad, iv, plain))
        return out

    def _plaintext(self, inner: bytes) -> tuple[bytes, bytes, int]:
        """(IV, padded plaintext, length of IV + ciphertext + ICV) for `inner`."""
        encr = self._suite.encr
        if self._aead:
            # A per-SA counter as IV: unique for the key, which is all GCM/ChaCha need.
            self._iv_counter += 1
            iv = self._iv_counter.to_bytes(8, "big")
            plain = inner + b"\x00"  # no padding, Pad Length 0
            return iv, plain, len(iv) + len(plain) + encr.icv_size
        iv = self._random(encr.iv_size)
        padlen = -(len(inner) + 1) % encr.block_size
        plain = inner + bytes(padlen) + bytes((padlen,))
        assert self._suite.integ is not None
        return iv, plain, len(iv) + len(plain) + self._suite.integ.icv_size

    def _seal(self, aad: bytes, iv: bytes, plain: bytes) -> bytes:
        if self._out_aead is not None:
            return aad + iv + self._out_aead.encrypt(self._out_salt + iv, plain, aad)
        msg = aad + iv + cbc_encrypt(self._out_key, iv, plain)
        assert self._suite.integ is not None
        return msg + self._suite.integ.mac(self._out_integ, msg)

    def unprotect_fragment(self, data: bytes, skf: codec.EncryptedFragment) -> bytes:
        """Check and decrypt one SKF payload of `data`: its part of the inner payloads."""
        return self._open(data, skf.body)

    def unprotect(self, data: bytes, sk: codec.Encrypted) -> tuple[codec.Payload, ...]:
        """Decrypt the SK payload of `data` (the whole message) and decode its payloads."""
        return codec.decode_payloads(sk.first_payload, self._open(data, sk.body))

    def _open(self, data: bytes, body: bytes) -> bytes:
        """The inner bytes of an SK/SKF payload whose encrypted part is `body` (the end of
        `data`; everything before it is authenticated)."""
        aad_len = len(data) - len(body)
        encr = self._suite.encr
        if self._in_aead is not None:
            if len(body) < encr.iv_size + encr.icv_size + 1:
                raise DecodeError("Encrypted payload too short")
            iv = body[: encr.iv_size]
            try:
                plain = self._in_aead.decrypt(
                    self._in_salt + iv, body[encr.iv_size :], data[:aad_len]
                )
            except InvalidTag:
                raise IntegrityError("SK payload failed its integrity check") from None
        else:
            integ = self._suite.integ
            assert integ is not None
            ct_len = len(body) - encr.iv_size - integ.icv_size
            if ct_len < encr.block_size or ct_len % encr.block_size:
                raise DecodeError("Encrypted payload length is not whole cipher blocks")
            icv = data[-integ.icv_size :]
            if not hmac.compare_digest(icv, integ.mac(self._in_integ, data[: -integ.icv_size])):
                raise IntegrityError("SK payload failed its integrity check")
            iv = body[: encr.iv_size]
            plain = cbc_decrypt(self._in_key, iv, body[encr.iv_size : encr.iv_size + ct_len])
        padlen = plain[-1]
        if padlen + 1 > len(plain):
            raise DecodeError("Encrypted payload padding exceeds its plaintext")
        return plain[: len(plain) - 1 - padlen]
