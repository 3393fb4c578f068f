"""COOKIE challenges (RFC 7296 §2.6) and the half-open SAs that trigger them.

A responder SA is half-open from our IKE_SA_INIT answer until IKE_AUTH established (or
ended) it. Once `cookie_threshold` SAs are half-open, an IKE_SA_INIT must carry
N(COOKIE) = <VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) first, else it is
answered statelessly with the COOKIE it needs; a new secret every
`cookie_secret_lifetime`, the previous one still accepted. Limits per source or in
total belong here as well.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Generic, TypeVar

from ike.codec import Notify, Payload
from ike.config import EngineSettings
from ike.constants import NotifyType
from ike.crypto import RandomSource
from ike.events import Endpoint
from ike.ts import ip

_SA = TypeVar("_SA")


class Cookies(Generic[_SA]):
    """The COOKIE secrets and the set of half-open responder SAs of one engine."""

    __slots__ = ("_settings", "_random", "_version", "_secrets", "_secret_at", "half_open")

    def __init__(self, settings: EngineSettings, random: RandomSource) -> None:
        self._settings = settings
        self._random = random
        self._version = 0
        self._secrets: dict[int, bytes] = {0: random(32)}
        self._secret_at: float | None = None
        self.half_open: set[_SA] = set()  # responder SAs between IKE_SA_INIT and IKE_AUTH

    def demand(
        self, payloads: Sequence[Payload], ni: bytes, remote: Endpoint, spi_i: bytes, now: float
    ) -> bytes | None:
        """The COOKIE an IKE_SA_INIT request must be answered with, or None when it may
        go on (few SAs half-open, or its first payload is a COOKIE we made)."""
        if len(self.half_open) < self._settings.cookie_threshold:
            return None
        self._rotate(now)
        first = payloads[0] if payloads else None
        if (
            type(first) is Notify
            and first.type == NotifyType.COOKIE
            and self._valid(first.data, ni, remote, spi_i)
        ):
            return None
        return self._cookie(self._version, ni, remote, spi_i)

    def _cookie(self, version: int, ni: bytes, remote: Endpoint, spi_i: bytes) -> bytes:
        """<VersionIDofSecret> | Hash(Ni | IPi | SPIi | <secret>) (RFC 7296 §2.6)."""
        mac = hmac.digest(self._secrets[version], ni + ip(remote[0]).packed + spi_i, "sha256")
        return bytes((version,)) + mac[:16]

    def _rotate(self, now: float) -> None:
        if self._secret_at is None:
            self._secret_at = now
        elif now - self._secret_at >= self._settings.cookie_secret_lifetime:
            self._secret_at = now
            previous = self._version
            self._version = (self._version + 1) % 256
            self._secrets = {self._version: self._random(32), previous: self._secrets[previous]}

    def _valid(self, cookie: bytes, ni: bytes, remote: Endpoint, spi_i: bytes) -> bool:
        if len(cookie) != 17 or cookie[0] not in self._secrets:
            return False
        return hmac.compare_digest(cookie, self._cookie(cookie[0], ni, remote, spi_i))
