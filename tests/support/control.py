"""A stand-in ControlBackend (the daemon's state, in-process) for the control API's tests:
it answers like a daemon with one connection "east" and records what it was asked."""

from __future__ import annotations

from typing import Any

from gateway.control import protocol as control
from gateway.control.protocol import ControlError

SA = {
    "connection": "east",
    "state": "ESTABLISHED",
    "local_addr": "192.0.2.1",
    "remote_addr": "192.0.2.2",
    "local_id": "gw-west",
    "remote_id": "gw-east",
    "spi_i": "1122334455667788",
    "spi_r": "99aabbccddeeff00",
    "ike_proposal": "aes256gcm16-prfsha384-x25519",
    "established_at": 1000.0,
    "rekey_at": 1000.0 + 4 * 3600,
    "expire_at": None,
    "children": [
        {
            "name": "net",
            "state": "INSTALLED",
            "spi_in": "c0000001",
            "spi_out": "c0000002",
            "mode": "tunnel",
            "encap": False,
            "esp_proposal": "aes256gcm16",
            "offload": "none",
            "bytes_in": 1234,
            "bytes_out": 5678,
            "packets_in": 10,
            "packets_out": 20,
            "local_ts": ["10.1.0.0/24"],
            "remote_ts": ["10.2.0.0/24"],
            "rekey_at": 1000.0 + 3600,
            "expire_at": 1000.0 + 3960,
            "installed_at": 1000.0,
        }
    ],
}


class FakeState:
    """An in-process stand-in for the daemon's state, recording what it was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.reloads = 0

    def list_conns(self) -> list[dict[str, Any]]:
        return [
            {
                "name": "east",
                "local_addrs": ["192.0.2.1"],
                "remote_addrs": ["192.0.2.2"],
                "local_id": "gw-west",
                "remote_id": "gw-east",
                "ike_proposals": ["aes256gcm16-prfsha384-x25519"],
                "start_action": "start",
                "children": [
                    {
                        "name": "net",
                        "local_ts": ["10.1.0.0/24"],
                        "remote_ts": ["10.2.0.0/24"],
                        "esp_proposals": ["aes256gcm16"],
                        "mode": "tunnel",
                        "start_action": "start",
                    }
                ],
            }
        ]

    def list_sas(self) -> list[dict[str, Any]]:
        return [SA]

    def stats(self) -> dict[str, Any]:
        if self.reloads > 99:
            raise RuntimeError("backend bug")
        return {
            "uptime": 5.0,
            "version": "0.1.0",
            "ike_sas": {"ESTABLISHED": 1},
            "child_sas": 1,
            "bytes_in": 1234,
            "bytes_out": 5678,
            "packets_in": 10,
            "packets_out": 20,
            "xdp": [],
            "xfrm_errors": {},
            "handshakes": 1,
            "auth_failures": 0,
            "dpd_failures": 0,
            "rekeys": 0,
        }

    async def _act(self, cmd: str, name: str, timeout: float) -> Any:
        self.calls.append((cmd, name, timeout))
        if name.split(".")[0] != "east":
            raise ControlError(control.UNKNOWN_CONNECTION, f"no connection named {name!r}")
        if name == "east.nope":
            raise ControlError(control.UNKNOWN_SA, "connection 'east' has no child 'nope'")
        if name == "east.crash":
            raise ZeroDivisionError("boom")
        return {"message": f"{cmd} {name}: ok"}

    async def initiate(self, name: str, timeout: float) -> Any:
        return await self._act("initiate", name, timeout)

    async def terminate(self, name: str, timeout: float) -> Any:
        return await self._act("terminate", name, timeout)

    async def rekey(self, name: str, timeout: float) -> Any:
        return await self._act("rekey", name, timeout)

    async def migrate(
        self, name: str, local_addr: str | None, remote_addr: str | None, timeout: float
    ) -> Any:
        return await self._act("migrate", name, timeout)

    async def redirect(self, name: str, to: str, timeout: float) -> Any:
        await self._act("redirect", name, timeout)
        return {"message": f"redirect {name} to {to}: ok"}

    async def reload(self) -> Any:
        self.reloads += 1
        return {"added": [], "removed": [], "changed": [], "unchanged": ["east"]}
