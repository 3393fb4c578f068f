"""Proposals: strongSwan's proposal syntax, proposal selection (RFC 7296 §2.7, §3.3.6).

A configured proposal is a string such as ``aes256gcm16-prfsha384-x25519`` (IKE) or
``aes128-sha256-esn`` (ESP), tokens joined by ``-``, several algorithms of one kind
allowed. For IKE without an explicit PRF the PRF follows the integrity algorithm, as in
strongSwan. The responder walks its own proposals in order and picks the first one the
peer also offers (configured preference wins, strongSwan's default).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ike import codec
from ike.constants import (
    DhGroup,
    EsnId,
    IntegId,
    NotifyType,
    ProtocolId,
    TransformType,
)
from ike.crypto import DH_GROUPS, ENCR, INTEG, PRF, DhGroupImpl, Encr, Integ, Prf
from ike.errors import LocalError, ProtocolError

_ENCR_WORDS: dict[str, Encr] = {e.name: e for e in ENCR.values()}
for _bits in (128, 192, 256):
    _ENCR_WORDS[f"aes{_bits}gcm"] = _ENCR_WORDS[f"aes{_bits}gcm16"]
    _ENCR_WORDS[f"aes{_bits}gcm128"] = _ENCR_WORDS[f"aes{_bits}gcm16"]
_INTEG_WORDS: dict[str, Integ] = {i.name: i for i in INTEG.values()}
_PRF_WORDS: dict[str, Prf] = {p.name: p for p in PRF.values()}
_DH_WORDS: dict[str, DhGroupImpl] = {g.name: g for g in DH_GROUPS.values()}
_DH_WORDS["curve25519"] = DH_GROUPS[DhGroup.CURVE25519]
_DH_WORDS["curve448"] = DH_GROUPS[DhGroup.CURVE448]
_ESN_WORDS = {"esn": EsnId.ESN, "noesn": EsnId.NO_ESN}
_PRF_FOR_INTEG: dict[int, Prf] = {
    IntegId.AUTH_HMAC_SHA2_256_128: PRF[5],
    IntegId.AUTH_HMAC_SHA2_384_192: PRF[6],
    IntegId.AUTH_HMAC_SHA2_512_256: PRF[7],
}


@dataclass(frozen=True, slots=True)
class ProposalSpec:
    """One configured proposal: acceptable algorithms per transform type, in preference order."""

    protocol: int
    text: str
    encr: tuple[Encr, ...]
    integ: tuple[Integ, ...] = ()
    prf: tuple[Prf, ...] = ()
    dh: tuple[DhGroupImpl, ...] = ()
    esn: tuple[int, ...] = ()

    def to_proposal(self, number: int, spi: bytes, *, with_dh: bool = True) -> codec.Proposal:
        t = [codec.Transform(TransformType.ENCR, e.id, e.key_bits) for e in self.encr]
        t += [codec.Transform(TransformType.PRF, p.id) for p in self.prf]
        t += [codec.Transform(TransformType.INTEG, i.id) for i in self.integ]
        if with_dh:
            t += [codec.Transform(TransformType.DH, g.id) for g in self.dh]
        t += [codec.Transform(TransformType.ESN, e) for e in self.esn]
        return codec.Proposal(number, self.protocol, spi, tuple(t))


def parse_proposal(text: str, protocol: int) -> ProposalSpec:
    """Parse one proposal in strongSwan syntax; LocalError names the bad token."""
    encr: list[Encr] = []
    integ: list[Integ] = []
    prf: list[Prf] = []
    dh: list[DhGroupImpl] = []
    esn: list[int] = []
    what = "IKE" if protocol == ProtocolId.IKE else "ESP"
    tokens = text.strip().lower().split("-")
    for tok in tokens:
        if tok in _ENCR_WORDS:
            encr.append(_ENCR_WORDS[tok])
        elif tok in _INTEG_WORDS:
            integ.append(_INTEG_WORDS[tok])
        elif tok in _PRF_WORDS and protocol == ProtocolId.IKE:
            prf.append(_PRF_WORDS[tok])
        elif tok in _DH_WORDS:
            dh.append(_DH_WORDS[tok])
        elif tok in _ESN_WORDS and protocol == ProtocolId.ESP:
            esn.append(_ESN_WORDS[tok])
        else:
            raise LocalError(f"{what} proposal {text!r}: unknown or unsupported algorithm {tok!r}")
    if not encr:
        raise LocalError(f"{what} proposal {text!r}: no encryption algorithm")
    aead = [e for e in encr if e.aead]
    if aead and len(aead) != len(encr):
        raise LocalError(f"{what} proposal {text!r}: mixes AEAD and non-AEAD encryption")
    if aead and integ:
        raise LocalError(f"{what} proposal {text!r}: AEAD encryption takes no integrity algorithm")
    if not aead and not integ:
        raise LocalError(f"{what} proposal {text!r}: needs an integrity algorithm")
    if protocol == ProtocolId.IKE:
        if not prf:
            prf = [_PRF_FOR_INTEG[i.id] for i in integ]
        if not prf:
            raise LocalError(f"IKE proposal {text!r}: AEAD needs a PRF (e.g. prfsha256)")
        if not dh:
            raise LocalError(f"IKE proposal {text!r}: needs a Diffie-Hellman group")
    elif not esn:
        esn = [EsnId.NO_ESN]
    return ProposalSpec(
        protocol, text, tuple(encr), tuple(integ), tuple(prf), tuple(dh), tuple(esn)
    )


def parse_proposals(texts: Sequence[str], protocol: int) -> tuple[ProposalSpec, ...]:
    if not texts:
        raise LocalError("at least one proposal is required")
    return tuple(parse_proposal(t, protocol) for t in texts)


# --------------------------------------------------------------------------- negotiated suites


@dataclass(frozen=True, slots=True)
class IkeSuite:
    encr: Encr
    integ: Integ | None
    prf: Prf
    dh: DhGroupImpl

    @property
    def name(self) -> str:
        parts = [self.encr.name] + ([self.integ.name] if self.integ else [])
        return "-".join(parts + [self.prf.name, self.dh.name])


@dataclass(frozen=True, slots=True)
class EspSuite:
    encr: Encr
    integ: Integ | None
    esn: bool
    dh: DhGroupImpl | None = None

    @property
    def name(self) -> str:
        parts = [self.encr.name] + ([self.integ.name] if self.integ else [])
        parts += [self.dh.name] if self.dh else []
        return "-".join(parts + (["esn"] if self.esn else []))

    @property
    def keymat_size(self) -> int:
        """Bytes of KEYMAT per direction (RFC 7296 §2.17: encryption key, then integrity)."""
        return self.encr.key_size + (self.integ.key_size if self.integ else 0)


def _offered(p: codec.Proposal) -> dict[int, list[tuple[int, int | None]]] | None:
    """Transforms of a peer proposal by type; None if it holds something we must reject."""
    by_type: dict[int, list[tuple[int, int | None]]] = {}
    for t in p.transforms:
        if t.other_attributes:
            continue  # §3.3.6: a transform with an unknown attribute is unusable
        if not 1 <= t.type <= 5:
            return None  # unknown transform type: reject the whole proposal
        by_type.setdefault(t.type, []).append((t.id, t.key_length))
    return by_type


_Offer = dict[int, list[tuple[int, int | None]]]


def _pick_encr_integ(spec: ProposalSpec, offer: _Offer) -> tuple[Encr, Integ | None] | None:
    encr = next((e for e in spec.encr if (e.id, e.key_bits) in offer.get(1, ())), None)
    if encr is None:
        return None
    peer_integ = [i for i, _ in offer.get(TransformType.INTEG, ()) if i != IntegId.NONE]
    if encr.aead:
        return None if peer_integ else (encr, None)
    integ = next((i for i in spec.integ if i.id in peer_integ), None)
    return None if integ is None else (encr, integ)


def _pick_ike(spec: ProposalSpec, offer: _Offer, ke_group: int | None = None) -> IkeSuite | None:
    pair = _pick_encr_integ(spec, offer)
    if pair is None:
        return None
    peer_prf = [i for i, _ in offer.get(TransformType.PRF, ())]
    prf = next((p for p in spec.prf if p.id in peer_prf), None)
    peer_dh = [i for i, _ in offer.get(TransformType.DH, ())]
    # the group of the peer's KE payload if acceptable: spares an INVALID_KE_PAYLOAD round
    dh = next((g for g in spec.dh if g.id == ke_group and g.id in peer_dh), None) or next(
        (g for g in spec.dh if g.id in peer_dh), None
    )
    if prf is None or dh is None:
        return None
    return IkeSuite(pair[0], pair[1], prf, dh)


def _pick_esp(spec: ProposalSpec, offer: _Offer, with_dh: bool) -> EspSuite | None:
    pair = _pick_encr_integ(spec, offer)
    if pair is None:
        return None
    peer_esn = [i for i, _ in offer.get(TransformType.ESN, ())] or [EsnId.NO_ESN]
    esn = next((e for e in spec.esn if e in peer_esn), None)
    if esn is None:
        return None
    dh: DhGroupImpl | None = None
    if with_dh:
        peer_dh = [i for i, _ in offer.get(TransformType.DH, ()) if i != DhGroup.NONE]
        if spec.dh or peer_dh:
            dh = next((g for g in spec.dh if g.id in peer_dh), None)
            if dh is None:
                return None
    return EspSuite(pair[0], pair[1], esn == EsnId.ESN, dh)


def suite_transforms(suite: IkeSuite | EspSuite) -> tuple[codec.Transform, ...]:
    t = [codec.Transform(TransformType.ENCR, suite.encr.id, suite.encr.key_bits)]
    if isinstance(suite, IkeSuite):
        t.append(codec.Transform(TransformType.PRF, suite.prf.id))
    if suite.integ:
        t.append(codec.Transform(TransformType.INTEG, suite.integ.id))
    if suite.dh:
        t.append(codec.Transform(TransformType.DH, suite.dh.id))
    if isinstance(suite, EspSuite):
        t.append(codec.Transform(TransformType.ESN, int(suite.esn)))
    return tuple(t)


def select_ike(
    ours: Sequence[ProposalSpec], theirs: Sequence[codec.Proposal], ke_group: int | None = None
) -> tuple[codec.Proposal, IkeSuite]:
    """Responder: choose; returns (the proposal to answer with, the suite). Within a
    matching proposal the group of the peer's KE payload (`ke_group`) is preferred."""
    offers = [(p, _offered(p)) for p in theirs if p.protocol == ProtocolId.IKE]
    for spec in ours:
        for p, offer in offers:
            if offer is None:
                continue
            suite = _pick_ike(spec, offer, ke_group)
            if suite is not None:
                return codec.Proposal(p.number, p.protocol, b"", suite_transforms(suite)), suite
    raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable IKE proposal")


def select_esp(
    ours: Sequence[ProposalSpec],
    theirs: Sequence[codec.Proposal],
    our_spi: bytes,
    *,
    with_dh: bool = False,
) -> tuple[codec.Proposal, EspSuite, bytes]:
    """Responder: returns (answer proposal carrying our SPI, suite, the peer's SPI)."""
    offers = [(p, _offered(p)) for p in theirs if p.protocol == ProtocolId.ESP and len(p.spi) == 4]
    for spec in ours:
        for p, offer in offers:
            if offer is None:
                continue
            suite = _pick_esp(spec, offer, with_dh)
            if suite is not None:
                answer = codec.Proposal(p.number, p.protocol, our_spi, suite_transforms(suite))
                return answer, suite, p.spi
    raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "no acceptable ESP proposal")


def accept_ike(ours: Sequence[ProposalSpec], answer: codec.SecurityAssociation) -> IkeSuite:
    """Initiator: the responder's choice must be one transform per type from our offer."""
    if len(answer.proposals) != 1:
        raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "responder chose more than one proposal")
    offer = _offered(answer.proposals[0])
    if offer is None or any(len(v) != 1 for v in offer.values()):
        raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "responder's proposal is not a choice")
    for spec in ours:
        suite = _pick_ike(spec, offer)
        if suite is not None:
            return suite
    raise ProtocolError(
        NotifyType.NO_PROPOSAL_CHOSEN, "responder chose a proposal we did not offer"
    )


def accept_esp(
    ours: Sequence[ProposalSpec], answer: codec.SecurityAssociation, *, with_dh: bool = False
) -> tuple[EspSuite, bytes]:
    """Initiator: check the responder's ESP choice; returns (suite, responder's SPI)."""
    if len(answer.proposals) != 1:
        raise ProtocolError(NotifyType.NO_PROPOSAL_CHOSEN, "responder chose more than one proposal")
    prop = answer.proposals[0]
    offer = _offered(prop)
    if (
        prop.protocol != ProtocolId.ESP
        or len(prop.spi) != 4
        or offer is None
        or any(len(v) != 1 for v in offer.values())
    ):
        raise ProtocolError(
            NotifyType.NO_PROPOSAL_CHOSEN, "responder's ESP proposal is not a choice"
        )
    for spec in ours:
        suite = _pick_esp(spec, offer, with_dh)
        if suite is not None:
            return suite, prop.spi
    raise ProtocolError(
        NotifyType.NO_PROPOSAL_CHOSEN, "responder chose an ESP proposal we did not offer"
    )
