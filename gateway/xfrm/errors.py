"""KernelError/XfrmError: a kernel refusal with the operation, the errno and a readable reason."""

from __future__ import annotations

import errno as errno_mod
import os

from gateway.errors import GatewayError


class KernelError(GatewayError):
    """The kernel refused a netlink operation (or the result is not what was asked).

    `operation` names what we tried, never key material; `errno` is the kernel's error
    number; `reason` the kernel's extended ACK text when it sent one, else strerror().
    """

    def __init__(self, operation: str, errno: int, reason: str = "") -> None:
        self.operation = operation
        self.errno = errno
        self.reason = reason or os.strerror(errno)
        name = errno_mod.errorcode.get(errno, str(errno))
        super().__init__(f"{operation}: {self.reason} ({name})")


class XfrmError(KernelError):
    """The kernel refused an XFRM operation ("NEWSA out spi=0x... 192.0.2.1->192.0.2.2")."""
