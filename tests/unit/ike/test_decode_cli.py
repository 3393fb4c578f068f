"""`gateway decode`: header and payload chain of real captured messages, SK with --keys."""

from __future__ import annotations

import io
import json
import sys

import pytest

from gateway.cli import main
from tests.unit.ike.harness import Net, any_sa, pair_confs


@pytest.fixture(scope="module")
def capture() -> tuple[list[bytes], bytes]:
    net = Net.make(*pair_confs())
    net.a.initiate("a2b", None, net.now)
    net.pump()
    sa = any_sa(net.a)
    assert sa.keys is not None
    return [d.data for _, d in net.log], sa.keys.sk_ei


def test_ike_sa_init_request(capture, capsys) -> None:  # type: ignore[no-untyped-def]
    msgs, _ = capture
    assert main(["decode", msgs[0].hex()]) == 0
    out = capsys.readouterr().out
    assert out.startswith("IKE_SA_INIT request from the original initiator, message ID 0")
    assert "ENCR ENCR_AES_GCM_16/256" in out and "DH CURVE25519" in out
    assert "NAT_DETECTION_SOURCE_IP" in out and "KE group=CURVE25519 length=32" in out


def test_ike_auth_with_and_without_keys(capture, capsys) -> None:  # type: ignore[no-untyped-def]
    msgs, sk_ei = capture
    assert main(["decode", msgs[2].hex()]) == 0
    out = capsys.readouterr().out
    assert "SK first_payload=IDi" in out and "decrypted" not in out
    assert main(["decode", "--keys", f"aes256gcm16:{sk_ei.hex()}", msgs[2].hex()]) == 0
    out = capsys.readouterr().out
    assert "decrypted:" in out and "IDi id_type=ID_IPV4_ADDR id=192.0.2.1" in out
    assert "10.1.0.0-10.1.255.255" in out and "SHARED_KEY_MESSAGE_INTEGRITY_CODE" in out
    assert sk_ei.hex() not in out
    assert main(["decode", "--json", "--keys", f"aes256gcm16:{sk_ei.hex()}", msgs[2].hex()]) == 0
    d = json.loads(capsys.readouterr().out)
    inner = [p["payload"] for p in d["payloads"][-1]["decrypted"]]
    assert inner == ["IDi", "AUTH", "SA", "TSi", "TSr"]


def test_stdin_and_marker(capture, capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    msgs, _ = capture
    text = ("00000000" + msgs[1].hex()).encode()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text)))
    assert main(["decode", "-"]) == 0
    out = capsys.readouterr().out
    assert "IKE_SA_INIT response from the original responder" in out
    assert "after the non-ESP marker" in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["decode", "zz"], "not hex"),
        (["decode", "00" * 40], "not a valid IKEv2 message"),
        (["decode", "--keys", "aes256gcm16:00", "00"], "36-byte SK_e"),
        (["decode", "--keys", "des:00", "00"], "unknown or unsupported algorithm"),
    ],
)
def test_user_errors_are_one_line(argv: list[str], msg: str, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and "Traceback" not in err


def test_wrong_key_is_a_clear_error(capture, capsys) -> None:  # type: ignore[no-untyped-def]
    msgs, _ = capture
    assert main(["decode", "--keys", "aes256gcm16:" + "11" * 36, msgs[2].hex()]) == 2
    assert "cannot decrypt the SK payload" in capsys.readouterr().err


def test_describe_handles_whatever_decodes() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from gateway.cli.decode import describe, render
    from gateway.errors import CommandError
    from tests.unit.ike.test_codec import VALID

    @settings(max_examples=500, deadline=None)
    @given(st.integers(28, len(VALID) - 1), st.binary(min_size=1, max_size=3))
    def check(pos: int, patch: bytes) -> None:
        data = VALID[:pos] + patch + VALID[pos + len(patch) :]
        try:
            render(describe(data))
        except CommandError:
            pass

    check()
