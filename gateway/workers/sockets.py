"""The workers' IKE sockets: one SO_REUSEPORT group per listen address and port, bound
by the supervisor in worker order (socket index = worker index), with the steering
program of bpf/reuseport.py attached to each group.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass

from bpf import reuseport
from gateway.config.schema import GatewayConfig
from gateway.errors import GatewayError
from gateway.transport import bind_socket


@dataclass(slots=True)
class SocketGroup:
    """One reuseport group: the N sockets of one listen address and port."""

    address: str
    nat_t: bool
    sockets: list[socket.socket]

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])


def bind_groups(config: GatewayConfig) -> list[SocketGroup]:
    """Bind every worker's sockets, worker 0 first in each group (socket index = bind
    order = worker index). GatewayError when a port cannot be bound."""
    gw = config.gateway
    groups: list[SocketGroup] = []
    try:
        for address in gw.listen:
            ike_port = gw.port
            for nat_t, port in ((False, gw.port), (True, gw.port_nat_t)):
                if nat_t and not ike_port:
                    port = 0  # an ephemeral IKE port (tests): ephemeral NAT-T port too
                group = SocketGroup(address, nat_t, [])
                groups.append(group)
                if port:
                    # Any process of our user could join a reuseport group (and replace its
                    # program): a plain bind first fails if the port is taken, by another
                    # gateway's workers too, as a single-process daemon's bind would.
                    bind_socket(address, port).close()
                for _ in range(gw.workers):
                    sock = bind_socket(
                        address,
                        port,
                        reuse_port=True,
                        esp_in_udp=nat_t and gw.dataplane == "xfrm",
                    )
                    group.sockets.append(sock)
                    port = sock.getsockname()[1]  # the rest join the first one's port
    except OSError as exc:
        close_groups(groups)
        raise GatewayError(f"cannot open IKE socket: {exc.strerror or exc}") from None
    return groups


def close_groups(groups: Sequence[SocketGroup]) -> None:
    for group in groups:
        for sock in group.sockets:
            sock.close()


def steer(groups: Sequence[SocketGroup], workers: int, live: Sequence[int]) -> None:
    """(Re)attach each group's steering program for the workers now serving."""
    for group in groups:
        program = reuseport.steering_program(nat_t=group.nat_t, workers=workers, live=live)
        try:
            reuseport.attach(group.sockets[0], program)
        except OSError as exc:
            raise GatewayError(
                f"cannot attach the IKE steering program ({group.address} port "
                f"{group.port}): {exc.strerror}"
            ) from None
