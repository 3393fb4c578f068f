"""gateway/control/ and `gateway ctl`: the JSON-lines protocol, its error replies for
every kind of malformed request (the server keeps serving), the 0600 socket, events, and
the ctl command's output and exit status, all against an in-process backend."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import entry as cli
from gateway.cli.ctl import format_sas
from gateway.control import protocol as control
from gateway.control.client import ControlClient
from gateway.control.protocol import ControlConnectionError, ControlError
from gateway.control.server import ControlServer
from gateway.errors import GatewayError
from tests.support.control import SA, FakeState


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ControlServer, FakeState, Path]]:
    path = tmp_path / "run" / "control.sock"
    state = FakeState()
    server = ControlServer(state, path)
    await server.start()
    try:
        yield server, state, path
    finally:
        await server.close()


async def raw_exchange(path: Path, data: bytes, replies: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(data)
    await writer.drain()
    out = [json.loads(await asyncio.wait_for(reader.readline(), 5)) for _ in range(replies)]
    writer.close()
    return out


async def test_socket_is_0600_in_a_0700_directory(served: Any) -> None:
    _, _, path = served
    mode = os.stat(path).st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700


async def test_round_trip_of_every_command(served: Any) -> None:
    _, state, path = served
    async with await ControlClient.connect(path) as client:
        assert await client.list_sas() == [SA]
        conns = await client.list_conns()
        assert conns[0]["name"] == "east" and conns[0]["children"][0]["mode"] == "tunnel"
        assert (await client.stats())["ike_sas"] == {"ESTABLISHED": 1}
        assert await client.initiate("east") == {"message": "initiate east: ok"}
        assert await client.terminate("east.net", timeout=2) == {
            "message": "terminate east.net: ok"
        }
        assert await client.rekey("east.net") == {"message": "rekey east.net: ok"}
        assert await client.redirect("east", "192.0.2.9", timeout=3) == {
            "message": "redirect east to 192.0.2.9: ok"
        }
        assert (await client.reload())["unchanged"] == ["east"]
    assert state.calls == [
        ("initiate", "east", 30.0),
        ("terminate", "east.net", 2.0),
        ("rekey", "east.net", 30.0),
        ("redirect", "east", 3.0),
    ]


async def test_refusals_carry_code_and_message(served: Any) -> None:
    _, _, path = served
    async with await ControlClient.connect(path) as client:
        with pytest.raises(ControlError) as info:
            await client.initiate("west")
        assert (info.value.code, info.value.message) == (
            "unknown-connection",
            "no connection named 'west'",
        )
        with pytest.raises(ControlError, match="no child 'nope'") as info:
            await client.terminate("east.nope")
        assert info.value.code == "unknown-sa"
        # a bug in the backend is a 'failed' reply, not a dead server or connection
        with pytest.raises(ControlError) as info:
            await client.rekey("east.crash")
        assert (info.value.code, info.value.message) == (
            "failed",
            "internal error (ZeroDivisionError)",
        )
        assert await client.list_sas() == [SA]


MALFORMED = [
    (b"this is not json\n", None, "bad-request", "not valid JSON"),
    (b"\xff\xfe\n", None, "bad-request", "not valid JSON"),
    (b"[1, 2]\n", None, "bad-request", "a request is a JSON object"),
    (b'{"cmd": "list-sas"}\n', None, "bad-request", "'id' must be an integer"),
    (b'{"id": "7", "cmd": "list-sas"}\n', None, "bad-request", "'id' must be an integer"),
    (b'{"id": true, "cmd": "list-sas"}\n', None, "bad-request", "'id' must be an integer"),
    (b'{"id": 3}\n', 3, "bad-request", "'cmd' must be a string"),
    (b'{"id": 4, "cmd": 5}\n', 4, "bad-request", "'cmd' must be a string"),
    (b'{"id": 5, "cmd": "format-disk"}\n', 5, "unknown-command", "unknown command 'format-disk'"),
    (b'{"id": 6, "cmd": "list-sas", "args": [1]}\n', 6, "bad-request", "'args' must be an object"),
    (b'{"id": 7, "cmd": "list-sas", "args": {"x": 1}}\n', 7, "bad-request", "unknown argument"),
    (b'{"id": 8, "cmd": "initiate"}\n', 8, "bad-request", 'initiate needs "name"'),
    (b'{"id": 9, "cmd": "rekey", "args": {"name": ""}}\n', 9, "bad-request", 'rekey needs "name"'),
    (b'{"id": 10, "cmd": "terminate", "args": {"name": 5}}\n', 10, "bad-request", "needs"),
    (
        b'{"id": 11, "cmd": "initiate", "args": {"name": "east", "timeout": -1}}\n',
        11,
        "bad-request",
        "'timeout' must be seconds",
    ),
    (b'{"id": 12, "cmd": "stats", "extra": 1}\n', 12, "bad-request", "unknown request field"),
    (b'{"id": 13, "cmd": "redirect", "args": {"name": "east"}}\n', 13, "bad-request", '"to"'),
    (
        b'{"id": 14, "cmd": "redirect", "args": {"name": "east", "to": 7}}\n',
        14,
        "bad-request",
        'redirect needs "to"',
    ),
    (
        b'{"id": 15, "cmd": "rekey", "args": {"name": "east", "to": "x"}}\n',
        15,
        "bad-request",
        "unknown argument",
    ),
]


@pytest.mark.parametrize(("line", "req_id", "code", "message"), MALFORMED)
async def test_malformed_requests_get_error_replies(
    served: Any, line: bytes, req_id: int | None, code: str, message: str
) -> None:
    server, _, path = served
    # the bad line, then a good request on the same connection: both answered, in order
    bad, good = await raw_exchange(path, line + b'{"id": 99, "cmd": "stats"}\n', 2)
    assert bad["id"] == req_id and bad["ok"] is False
    assert bad["error"]["code"] == code and message in bad["error"]["message"]
    assert good["id"] == 99 and good["ok"] is True
    assert server.bad_requests == 1


async def test_blank_lines_ignored_and_last_unterminated_request_answered(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b'\n  \n{"id": 1, "cmd": "stats"}\n{"id": 2, "cmd": "list-sas"}')
    writer.write_eof()
    first = json.loads(await reader.readline())
    second = json.loads(await reader.readline())
    assert first["ok"] is True
    assert second["id"] == 2 and second["result"] == [SA]
    assert await reader.readline() == b""
    writer.close()


async def test_oversized_request_refused_and_server_survives(served: Any) -> None:
    _, _, path = served
    reader, writer = await asyncio.open_unix_connection(str(path))
    writer.write(b'{"id": 1, "cmd": "' + b"x" * (control.MAX_LINE + 10) + b'"}\n')
    reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
    assert reply["ok"] is False and "longer than" in reply["error"]["message"]
    assert await reader.read() == b""  # hung up: the request boundary is lost
    writer.close()
    async with await ControlClient.connect(path) as client:
        assert await client.list_sas() == [SA]


async def test_many_clients_and_abrupt_disconnects(served: Any) -> None:
    _, _, path = served
    for _ in range(5):
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b'{"id": 1, "cmd": "list-sas"}\n')
        writer.close()  # gone before the reply
    clients = [await ControlClient.connect(path) for _ in range(10)]
    results = await asyncio.gather(*(c.list_sas() for c in clients))
    assert all(r == [SA] for r in results)
    for c in clients:
        await c.close()


async def test_events_stream_and_requests_on_a_subscribed_connection(served: Any) -> None:
    server, _, path = served
    async with await ControlClient.connect(path) as client:
        events = await client.subscribe()
        assert server.subscribers == 1
        server.publish("ike-established", connection="east", remote_addr="192.0.2.2")
        server.publish("child-established", connection="east", child="net")
        first = await asyncio.wait_for(anext(events), 5)
        second = await asyncio.wait_for(anext(events), 5)
        assert first["type"] == "ike-established" and first["connection"] == "east"
        assert isinstance(first["time"], float)
        assert second["type"] == "child-established" and second["child"] == "net"
        assert await client.list_sas() == [SA]  # replies still routed while subscribed
    await asyncio.sleep(0.05)
    assert server.subscribers == 0


async def test_a_subscriber_that_cannot_keep_up_is_dropped(served: Any) -> None:
    server, _, path = served
    async with (
        await ControlClient.connect(path) as slow,
        await ControlClient.connect(path) as other,
    ):
        await slow.subscribe()
        for i in range(control.SUBSCRIBER_QUEUE + 1):  # no await: the pump cannot run
            server.publish("error", message=f"e{i}")
        assert server.subscribers == 0
        assert await other.list_sas() == [SA]


async def test_stale_socket_replaced_live_socket_refused(tmp_path: Path) -> None:
    path = tmp_path / "c.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # file left behind, nobody listening
    first = ControlServer(FakeState(), path)
    await first.start()
    try:
        with pytest.raises(GatewayError, match="in use"):
            await ControlServer(FakeState(), path).start()
    finally:
        await first.close()
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(GatewayError, match="not a socket"):
        await ControlServer(FakeState(), path).start()


async def test_unusable_socket_path_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(GatewayError, match="control socket .*file/c.sock"):
        await ControlServer(FakeState(), blocker / "c.sock").start()


async def test_client_errors(tmp_path: Path, served: Any) -> None:
    with pytest.raises(ControlConnectionError, match="is the gateway running"):
        await ControlClient.connect(tmp_path / "nothing.sock")
    server, _, path = served
    client = await ControlClient.connect(path)
    await server.close()
    with pytest.raises(ControlConnectionError):
        await client.list_sas()
    await client.close()


def test_format_sas_looks_like_swanctl() -> None:
    text = format_sas([SA], now=1000.0 + 65)
    assert text.splitlines()[:4] == [
        "east: ESTABLISHED, IKEv2, 1122334455667788_i 99aabbccddeeff00_r",
        "  local  'gw-west' @ 192.0.2.1",
        "  remote 'gw-east' @ 192.0.2.2",
        "  aes256gcm16-prfsha384-x25519",
    ]
    assert "  net: INSTALLED, TUNNEL, ESP:aes256gcm16, offload none" in text
    assert "    installed 1m05s ago, rekeying in 58m55s, expires in 1h04m" in text
    assert "    in  c0000001,         1234 bytes,        10 packets" in text
    assert "    remote 10.2.0.0/24" in text
    assert format_sas([]) == "no IKE SAs"


# ----------------------------------------------------------------- the ctl command


@pytest.fixture
def daemon_thread(
    tmp_path: Path,
) -> Iterator[tuple[ControlServer, FakeState, Path, asyncio.AbstractEventLoop]]:
    """A server on its own loop in a thread, so `gateway ctl` (asyncio.run) can talk to it."""
    path = tmp_path / "ctl.sock"
    state = FakeState()
    server = ControlServer(state, path)
    loop = asyncio.new_event_loop()
    ready = threading.Event()

    def main() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(server.start())
        ready.set()
        loop.run_forever()
        loop.run_until_complete(server.close())
        loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    assert ready.wait(5)
    try:
        yield server, state, path, loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


def ctl(path: Path, *argv: str) -> int:
    return cli.main(["ctl", "--socket", str(path), *argv])


def test_ctl_commands(daemon_thread: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server, state, path, _ = daemon_thread
    assert ctl(path, "list-sas", "--json") == 0
    assert json.loads(capsys.readouterr().out) == [SA]
    assert ctl(path, "--json", "list-conns") == 0
    assert json.loads(capsys.readouterr().out)[0]["name"] == "east"
    assert ctl(path, "list-sas") == 0
    assert capsys.readouterr().out.startswith("east: ESTABLISHED, IKEv2, 1122334455667788_i")
    assert ctl(path, "list-conns") == 0
    assert "net: TUNNEL, aes256gcm16, start_action start" in capsys.readouterr().out
    assert ctl(path, "stats") == 0
    assert "IKE SAs: 1 ESTABLISHED" in capsys.readouterr().out
    assert ctl(path, "initiate", "east.net", "--timeout", "7") == 0
    assert capsys.readouterr().out.strip() == "initiate east.net: ok"
    assert state.calls[-1] == ("initiate", "east.net", 7.0)
    assert ctl(path, "reload", "--json") == 0
    assert json.loads(capsys.readouterr().out)["unchanged"] == ["east"]
    assert ctl(path, "redirect", "east", "--to", "gw2.example") == 0
    assert capsys.readouterr().out.strip() == "redirect east to gw2.example: ok"

    assert ctl(path, "terminate", "west") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == (
        "gateway ctl terminate: no connection named 'west' (unknown-connection)"
    )
    assert ctl(path, "rekey", "east.nope") == 1
    assert "unknown-sa" in capsys.readouterr().err


def test_ctl_unreachable_socket(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl(tmp_path / "none.sock", "list-sas") == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("gateway ctl: cannot connect to control socket") and "Traceback" not in err
    )


def test_ctl_events(daemon_thread: Any, capsys: pytest.CaptureFixture[str]) -> None:
    server, _, path, loop = daemon_thread
    result: list[int] = []
    runner = threading.Thread(
        target=lambda: result.append(ctl(path, "events", "--count", "2", "--json"))
    )
    runner.start()
    for _ in range(250):
        if server.subscribers:
            break
        threading.Event().wait(0.02)
    assert server.subscribers == 1

    def publish() -> None:
        server.publish("ike-established", connection="east")
        server.publish("child-deleted", connection="east", child="net")

    loop.call_soon_threadsafe(publish)
    runner.join(10)
    assert result == [0]
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["type"] for e in lines] == ["ike-established", "child-deleted"]
