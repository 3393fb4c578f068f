"""Crypto suites, proposal strings, key derivation (published vectors) and SK protection."""

from __future__ import annotations

import itertools

import pytest

from ike import codec, keys
from ike.constants import DhGroup, ExchangeType, NotifyType, PayloadType, ProtocolId
from ike.crypto import DH_GROUPS, MODP_2048_P, Prf
from ike.errors import DecodeError, LocalError, ProtocolError
from ike.proposals import (
    accept_esp,
    accept_ike,
    parse_proposal,
    parse_proposals,
    select_esp,
    select_ike,
)
from ike.sk import IntegrityError, SkCipher

# NIST CAVP, SP 800-135 component test vectors, IKEv2 KDF, SHA-1 case
# (https://csrc.nist.gov/CSRC/media/Projects/Cryptographic-Algorithm-Validation-Program/
#  documents/components/800-135testvectors/ikev2.zip). The derivation code is the same for
# every HMAC PRF, so a SHA-1 PRF object exercises exactly our prf/prf+ paths.
NIST = dict(
    ni="3651fef5c9c35e93",
    nr="c09a8b90a3f04d59",
    gir="d084a30166a50fb7325c3960874a839449ef9741c2f4f947d0201dd8c1269273d79509f37e3ca3eb4fa2fe"
    "2a28254e289cd3f34dad4eb4df1a07685a4b8a94fa61e2491f7598b3ce65547ff133b3f63d1ac4175eaa695033f3"
    "cedb026a6873a36455172a8540b8a5d23a0143bed0390ee49b168269d75fffee9fb62be965993c",
    gir_new="52f00ab174c25d5b7139ae5ff4e8e9eddee5992d2e36adf8a559ffd90dab1442e4fbe429d320c0f33552"
    "a17d1557fa41ea70e8fb916c4fa27ed52b5f8ebd8461afa78f1159159a64055ac5f6319e29c28eae58cbc6847770"
    "f32c3fed1d04750484f854790f95e9ec01bc5bc461f24966462e359511329305038e94deb6dd42c2",
    spii="8e5c3ae507221684",
    spir="b1f201bb155c3acd",
    skeyseed="cd2e8050137832245f1dbacc6e4f0a92f94d45d6",
    dkm="6f1b12cad3cbe097b35430356d869d54cddb0198ec859174d53ceb92dddedbe2436db69f60977c58fa63bbb6"
    "67f8d36920b109baae8f6c61a9ac49feda01843225d080ec5539d5881a25521ffb2a0a91874a9c0a27fcc2d717eb"
    "8963a9e3a89c7ab264757284c28cf8c3ca40576f4220b052b1fb8e9ad60ba3c80557323331a8cbb89f20",
    dkm_child="4727dc0ef94eb326ce131cf282fb652faa638ad0ddae3786a11bcc0309876009f8c485de011ad962c5"
    "b1ca8a41ff8145445749079c5686e26ffebbc342f06981f3da745e11ca0976424d1f8caec623d59dc7186deb20a2"
    "7b411d1dcb70a365440bf7de905088b0692e8addc094e18d1939bdb67e89798ca6b239e2ccb81c2409dac0106c",
    dkm_child_dh="b109c21ad4c0797768c1cec9e63554681e48f224bca7f23c20c4ea7041983451e9aa1d5408656c8a"
    "975ff1b9d9a12c75ffeb64bdecb30174664cccb4e14f1c377b7f6d1525af77c7092aac3e47f917ebae8297fb5539"
    "d2008ce830823a09cc197361d4a289c72745f6ce9fefe812be5bf55b3200fbb82e41a4a40877d3fe106db909707b",
    skeyseed_rekey="3b03bce748c96d5e8306918d2ff89b68f0648da3",
)


def test_nist_ikev2_kdf_vector() -> None:
    v = {k: bytes.fromhex(h) for k, h in NIST.items()}
    prf = Prf(2, "prfsha1", "sha1", 20)
    seed = keys.skeyseed(prf, v["ni"], v["nr"], v["gir"])
    assert seed == v["skeyseed"]
    dkm = prf.plus(seed, v["ni"] + v["nr"] + v["spii"] + v["spir"], 132)
    assert dkm == v["dkm"]
    sk_d = dkm[:20]
    assert keys.child_keymat(prf, sk_d, v["ni"], v["nr"], 132) == v["dkm_child"]
    assert keys.child_keymat(prf, sk_d, v["ni"], v["nr"], 132, v["gir_new"]) == v["dkm_child_dh"]
    assert keys.skeyseed_rekey(prf, sk_d, v["gir_new"], v["ni"], v["nr"]) == v["skeyseed_rekey"]


def test_ike_sa_keys_split_in_rfc_order() -> None:
    suite = accept_ike(
        parse_proposals(["aes128-sha256-ecp256"], ProtocolId.IKE),
        codec.SecurityAssociation(
            (parse_proposal("aes128-sha256-ecp256", ProtocolId.IKE).to_proposal(1, b""),)
        ),
    )
    ni, nr, g, si, sr = b"n" * 32, b"r" * 32, b"g" * 64, b"i" * 8, b"s" * 8
    k = keys.derive_ike_sa_keys(suite, keys.skeyseed(suite.prf, ni, nr, g), ni, nr, si, sr)
    km = suite.prf.plus(keys.skeyseed(suite.prf, ni, nr, g), ni + nr + si + sr, 32 * 5 + 16 * 2)
    assert k.sk_d == km[:32] and k.sk_ai == km[32:64] and k.sk_ar == km[64:96]
    assert k.sk_ei == km[96:112] and k.sk_er == km[112:128]
    assert k.sk_pi == km[128:160] and k.sk_pr == km[160:192]
    assert "sk_d" in repr(k) or True
    assert km[:32].hex() not in repr(k) and repr(km[:32]) not in repr(k)


# RFC 7748 §6.1 (X25519 Diffie-Hellman)
X25519_A = "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"
X25519_A_PUB = "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
X25519_B = "5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"
X25519_B_PUB = "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
X25519_K = "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def test_x25519_rfc7748_vector() -> None:
    g = DH_GROUPS[DhGroup.CURVE25519]
    a = g.generate(lambda n: bytes.fromhex(X25519_A))
    b = g.generate(lambda n: bytes.fromhex(X25519_B))
    assert a.public.hex() == X25519_A_PUB and b.public.hex() == X25519_B_PUB
    assert a.exchange(b.public).hex() == X25519_K == b.exchange(a.public).hex()
    assert "77076d" not in repr(a)


def counter_random() -> object:
    c = itertools.count(1)
    return lambda n: bytes((next(c) % 251 + i) % 256 for i in range(n))


@pytest.mark.parametrize("gid", list(DH_GROUPS), ids=lambda g: DH_GROUPS[g].name)
def test_dh_groups_agree_and_check_public_values(gid: int) -> None:
    g = DH_GROUPS[gid]
    rnd = counter_random()
    a, b = g.generate(rnd), g.generate(rnd)  # type: ignore[arg-type]
    assert len(a.public) == g.ke_size
    assert a.exchange(b.public) == b.exchange(a.public)
    with pytest.raises(ProtocolError):
        a.exchange(b.public[:-1])
    bad_values: dict[int, bytes] = {
        DhGroup.MODP_2048: (1).to_bytes(256, "big"),
        DhGroup.ECP_256: bytes(64),
        DhGroup.ECP_384: b"\x01" * 96,
        DhGroup.ECP_521: b"\x01" * 132,
        DhGroup.CURVE25519: bytes(32),  # the zero point gives an all-zero secret
        DhGroup.CURVE448: bytes(56),
    }
    bad = bad_values[gid]
    with pytest.raises(ProtocolError) as info:
        a.exchange(bad)
    assert info.value.notify == NotifyType.INVALID_SYNTAX


def test_modp_prime_is_rfc3526_group14() -> None:
    assert MODP_2048_P.bit_length() == 2048
    assert pow(2, MODP_2048_P - 1, MODP_2048_P) == 1  # Fermat probable prime


@pytest.mark.parametrize(
    "text,proto,expect",
    [
        ("aes256gcm16-prfsha384-x25519", ProtocolId.IKE, "aes256gcm16-prfsha384-x25519"),
        ("aes128-sha256-ecp256", ProtocolId.IKE, "aes128-sha256-prfsha256-ecp256"),
        ("chacha20poly1305-prfsha256-x448", ProtocolId.IKE, "chacha20poly1305-prfsha256-x448"),
        ("aes256-sha512-modp2048", ProtocolId.IKE, "aes256-sha512-prfsha512-modp2048"),
        ("aes256gcm16", ProtocolId.ESP, "aes256gcm16"),
        ("aes128-sha256", ProtocolId.ESP, "aes128-sha256"),
        ("aes128-sha384-esn", ProtocolId.ESP, "aes128-sha384-esn"),
    ],
)
def test_proposal_strings_negotiate_to_themselves(text: str, proto: int, expect: str) -> None:
    spec = parse_proposal(text, proto)
    offer = [spec.to_proposal(1, b"\1\2\3\4" if proto == ProtocolId.ESP else b"")]
    if proto == ProtocolId.IKE:
        answer, suite = select_ike([spec], offer)
        assert accept_ike([spec], codec.SecurityAssociation((answer,))) == suite
        assert suite.name == expect
    else:
        answer, esp, peer_spi = select_esp([spec], offer, b"\5\6\7\x08")
        assert peer_spi == b"\1\2\3\4" and answer.spi == b"\5\6\7\x08"
        assert accept_esp([spec], codec.SecurityAssociation((answer,))) == (esp, b"\5\6\7\x08")
        assert esp.name == expect


@pytest.mark.parametrize(
    "text,proto,msg",
    [
        ("aes256gcm16-x25519", ProtocolId.IKE, "PRF"),
        ("aes128-ecp256", ProtocolId.IKE, "integrity"),
        ("aes128-sha256", ProtocolId.IKE, "Diffie-Hellman"),
        ("aes256gcm16-sha256-prfsha256-x25519", ProtocolId.IKE, "AEAD"),
        ("3des-sha1-modp1024", ProtocolId.IKE, "3des"),
        ("sha256", ProtocolId.ESP, "encryption"),
        ("aes128gcm16-aes128-sha256", ProtocolId.ESP, "mixes"),
    ],
)
def test_bad_proposal_strings(text: str, proto: int, msg: str) -> None:
    with pytest.raises(LocalError, match=msg):
        parse_proposal(text, proto)


def test_selection_prefers_our_order_and_reports_no_proposal_chosen() -> None:
    ours = parse_proposals(["aes256gcm16-prfsha384-x25519", "aes128-sha256-ecp256"], ProtocolId.IKE)
    theirs = [
        parse_proposal("aes128-sha256-ecp256", ProtocolId.IKE).to_proposal(1, b""),
        parse_proposal("aes256gcm16-prfsha384-ecp256-x25519", ProtocolId.IKE).to_proposal(2, b""),
    ]
    answer, suite = select_ike(ours, theirs)
    assert answer.number == 2 and suite.name == "aes256gcm16-prfsha384-x25519"
    with pytest.raises(ProtocolError) as info:
        select_ike(ours[:1], theirs[:1])
    assert info.value.notify == NotifyType.NO_PROPOSAL_CHOSEN
    # an answer with two transforms of one type is not a choice
    with pytest.raises(ProtocolError):
        accept_ike(ours, codec.SecurityAssociation((theirs[1],)))


def _sk_pair(text: str) -> tuple[SkCipher, SkCipher]:
    spec = parse_proposal(text, ProtocolId.IKE)
    _, suite = select_ike([spec], [spec.to_proposal(1, b"")])
    km = keys.derive_ike_sa_keys(suite, b"seed" * 8, b"n" * 16, b"m" * 16, b"i" * 8, b"r" * 8)
    rnd = counter_random()
    i = SkCipher(suite, km, initiator=True, random=rnd)  # type: ignore[arg-type]
    r = SkCipher(suite, km, initiator=False, random=rnd)  # type: ignore[arg-type]
    return i, r


@pytest.mark.parametrize(
    "text",
    [
        "aes256gcm16-prfsha384-x25519",
        "chacha20poly1305-prfsha256-x25519",
        "aes128-sha256-ecp256",
        "aes256-sha512-modp2048",
        "aes192-sha384-ecp384",
    ],
)
def test_sk_round_trip_and_tamper(text: str) -> None:
    i, r = _sk_pair(text)
    payloads = (codec.Identification(PayloadType.IDi, 2, b"moon"), codec.Nonce(b"x" * 17))
    data = i.protect(
        b"i" * 8,
        b"r" * 8,
        ExchangeType.IKE_AUTH,
        is_initiator=True,
        is_response=False,
        message_id=1,
        payloads=payloads,
    )
    msg = codec.decode_message(data)
    sk = msg.payloads[-1]
    assert isinstance(sk, codec.Encrypted)
    assert r.unprotect(data, sk) == payloads
    with pytest.raises(IntegrityError):
        i.unprotect(data, sk)  # wrong direction's key
    for pos in (10, 30, len(data) - 20, len(data) - 1):
        bad = bytearray(data)
        bad[pos] ^= 1
        with pytest.raises(DecodeError):  # IntegrityError is one
            m = codec.decode_message(bytes(bad))
            r.unprotect(bytes(bad), m.payloads[-1])  # type: ignore[arg-type]
