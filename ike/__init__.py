"""Sans-IO IKEv2 engine (RFC 7296): wire codec, crypto suites, key derivation, SA state machines.

Nothing here imports asyncio, socket, time, pyroute2, bcc or gateway (tests/unit enforce it).
"""
