"""The control API (docs/daemon.md): how `gateway ctl`, the console and the workers'
supervisor talk to a running daemon.

    protocol.py  the wire format, commands, error codes, ControlError, request checks
    server.py    ControlServer: serves a ControlBackend on the unix socket, publishes events
    client.py    ControlClient: the asyncio client (imports nothing of the daemon)
"""
