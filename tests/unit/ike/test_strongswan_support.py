"""The strongSwan helper's parser of `swanctl --list-sas --raw` (used by host tests)."""

from __future__ import annotations

from tests.support.strongswan import StrongSwan, parse_vici_raw

# shape of a real line from strongSwan 5.9.8 (values shortened)
RAW = (
    " {eng {uniqueid=1 version=2 state=ESTABLISHED local-host=192.0.2.2 local-port=4500 "
    "initiator-spi=55fd58008e690ccf responder-spi=0483742b60fc93b2 nat-fake=yes "
    "encr-alg=AES_GCM_16 encr-keysize=256 child-sas {net-1 {name=net state=INSTALLED "
    "spi-in=f61d92db spi-out=f5b0038c local-ts=[10.2.0.0/16] remote-ts=[10.1.0.0/16 "
    "10.3.0.0/16]}}}}"
)


def test_parse_vici_raw_nested_sections_and_lists() -> None:
    tree = parse_vici_raw(RAW)
    sa = tree["eng"]
    assert sa["state"] == "ESTABLISHED" and sa["local-port"] == "4500"
    child = sa["child-sas"]["net-1"]
    assert child["spi-in"] == "f61d92db" and child["state"] == "INSTALLED"
    assert child["local-ts"] == ["10.2.0.0/16"]
    assert child["remote-ts"] == ["10.1.0.0/16", "10.3.0.0/16"]


def test_generated_strongswan_conf_points_at_private_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    class FakeNs:
        name = "x"

    sw = StrongSwan(FakeNs(), workdir=tmp_path)  # type: ignore[arg-type]
    sw.write_config("connections {}\n")
    conf = (tmp_path / "strongswan.conf").read_text()
    assert f"socket = unix://{tmp_path}/charon.vici" in conf
    assert "kernel-libipsec" in conf and "kdf" in conf
    assert oct((tmp_path / "swanctl.conf").stat().st_mode & 0o777) == "0o600"
    sw.close()
    assert tmp_path.exists()  # a caller's directory is left alone
