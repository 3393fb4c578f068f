"""The EAP users file (gateway/eap_secrets.py): swanctl-shaped TOML, every problem at
once with its line and never a secret, PSK-file permission checks, and the result feeding
EAP-MSCHAPv2's authenticator."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from gateway.config.reader import ConfigError
from gateway.eap_secrets import EapSecrets, load_eap_secrets, parse_eap_secrets
from ike.eap import mschapv2 as ms
from ike.eap.packet import EapType
from ike.eap.session import EapAuthenticator, EapPeer, Status
from tests.unit.ike.eap.helpers import converse

GOOD = f"""
[secrets.eap-alice]
id = ["alice", "alice@example.org"]
secret = "correct horse battery"

[secrets.eap-carol]
id1 = "carol"
id2 = "carol@example.org"
secret = "0s{base64.b64encode("häuschen".encode()).decode()}"

[secrets.ntlm-bob]
id = "bob"
secret = "0x{ms.nt_password_hash("bobs password").hex()}"
"""


def test_a_good_file() -> None:
    secrets = parse_eap_secrets(GOOD, "eap.toml")
    assert [u.name for u in secrets.users] == ["eap-alice", "eap-carol", "ntlm-bob"]
    assert secrets.nt_hash(b"alice") == ms.nt_password_hash("correct horse battery")
    assert secrets.nt_hash(b"alice@example.org") == secrets.nt_hash(b"alice")
    assert secrets.nt_hash(b"carol@example.org") == ms.nt_password_hash("häuschen")
    assert secrets.nt_hash(b"bob") == ms.nt_password_hash("bobs password")
    assert secrets.nt_hash(b"mallory") is None
    bob = secrets.user(b"bob")
    assert bob is not None and bob.password is None  # only the hash is known
    shown = repr(secrets)
    assert "correct horse" not in shown and ms.nt_password_hash("bobs password").hex() not in shown


def test_every_problem_is_reported_with_its_line_and_no_secret() -> None:
    text = """[secrets.eap-a]
secret = "hunter2-first"

[secrets.eap-b]
id = "x"
secret = "0xnothex-hunter2"
colour = "blue"

[secrets.ntlm-c]
id = "y"
secret = "0x00ff"

[secrets.eap-d]
id = "x"
secret = "0xff"

[secrets.eap-e]
id = "z"

[secrets.private-f]
id = "w"
secret = "hunter2-last"

[other]
"""
    with pytest.raises(ConfigError) as info:
        parse_eap_secrets(text, "eap.toml")
    message = str(info.value)
    expected = [
        'eap.toml:1: secrets.eap-a: needs id = "..."',
        "eap.toml:6: secrets.eap-b.secret: 0x... is not hexadecimal",
        "eap.toml:7: secrets.eap-b.colour: unknown key",
        "eap.toml:11: secrets.ntlm-c.secret: an NT hash has 16 bytes, not 2",
        "eap.toml:15: secrets.eap-d.secret: an EAP password must be UTF-8 text",
        'eap.toml:17: secrets.eap-e.secret: needs secret = "..."',
        "eap.toml:20: secrets.private-f: only eap-NAME and ntlm-NAME secrets",
        "eap.toml:24: other: unknown key",
    ]
    lines = message.splitlines()[1:]
    assert len(lines) == len(expected)
    for got, want in zip(lines, expected, strict=True):  # in file order
        assert got.strip().startswith(want), message
    assert "hunter2" not in message and "00ff" not in message


def test_duplicate_identity() -> None:
    text = (
        '[secrets.eap-a]\nid = "x"\nsecret = "a"\n[secrets.eap-b]\nid = ["y", "x"]\nsecret = "b"\n'
    )
    with pytest.raises(ConfigError, match="eap.toml:4: secrets.eap-b: id 'x' is also in eap-a"):
        parse_eap_secrets(text, "eap.toml")


def test_toml_syntax_error_names_the_line_only() -> None:
    with pytest.raises(ConfigError, match=r"eap.toml:3: TOML syntax") as info:
        parse_eap_secrets('[secrets.eap-a]\nid = "a"\nsecret = "s3cr3t-value\n', "eap.toml")
    assert "s3cr3t" not in str(info.value)


def test_file_checks_are_those_of_psk_files(tmp_path: Path) -> None:
    path = tmp_path / "eap.toml"
    with pytest.raises(ConfigError, match="no such file"):
        load_eap_secrets(path)
    path.write_text(GOOD)
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="accessible by group/others .mode 0644.; run chmod 600"):
        load_eap_secrets(path)
    path.chmod(0o600)
    assert len(load_eap_secrets(path).users) == 3
    with pytest.raises(ConfigError, match="not a regular file"):
        load_eap_secrets(tmp_path)
    path.write_bytes(b'[secrets.eap-a]\nid = "a"\nsecret = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="not UTF-8 text") as info:
        load_eap_secrets(path)
    assert "0xff" not in str(info.value)


def test_the_users_drive_eap_mschapv2() -> None:
    secrets: EapSecrets = parse_eap_secrets(GOOD, "eap.toml")

    def run(identity: bytes, password: str) -> Status:
        auth = EapAuthenticator({EapType.MSCHAPV2: lambda i: ms.MschapV2Server(i, secrets.nt_hash)})
        peer = EapPeer(
            identity,
            {EapType.MSCHAPV2: lambda: ms.MschapV2Peer(identity, ms.nt_password_hash(password))},
        )
        converse(auth, peer)
        return auth.status

    assert run(b"alice@example.org", "correct horse battery") is Status.SUCCESS
    assert run(b"bob", "bobs password") is Status.SUCCESS  # from the NT hash alone
    assert run(b"carol", "häuschen") is Status.SUCCESS
    assert run(b"alice", "wrong") is Status.FAILURE
