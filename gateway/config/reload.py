"""Reading the configuration again for a running gateway (SIGHUP, `gateway ctl reload`).

Shared by the daemon and the workers' supervisor: a file with errors is logged,
published as an `error` event and refused with a ControlError, and the running
configuration stays. `gateway_changes` says what of `[gateway]` a reload can apply.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Protocol

from gateway.config.engine import check_engine_config
from gateway.config.reader import ConfigError, load_config
from gateway.config.schema import GatewayConfig, GatewaySettings
from gateway.control.protocol import FAILED, ControlError
from gateway.errors import GatewayError

log = logging.getLogger("gateway.daemon")


class Publisher(Protocol):
    """Where the refusal is published (the control server)."""

    def publish(self, event_type: str, **fields: Any) -> None: ...


def load_for_reload(path: str, control: Publisher) -> GatewayConfig:
    """Read and check the config file for a reload; a bad one is logged, published as an
    `error` event and refused (ControlError), leaving the running configuration."""
    try:
        new = load_config(path)
        check_engine_config(new)
    except ConfigError as exc:
        log.error("event=config-reload-failed errors=%d", len(exc.issues))
        for issue in exc.issues:
            log.error("event=config-error %s", issue.format(exc.source))
        control.publish("error", message=f"reload refused: {exc}")
        raise ControlError(FAILED, f"reload refused, configuration unchanged: {exc}") from None
    except GatewayError as exc:
        control.publish("error", message=f"reload refused: {exc}")
        raise ControlError(FAILED, f"reload refused, configuration unchanged: {exc}") from None
    return new


def gateway_changes(old: GatewaySettings, new: GatewaySettings) -> tuple[bool, bool]:
    """(a restart is needed, [gateway.xdp] settings a reload applies in place changed):
    steering, unknown-SPI drop and the IKE_SA_INIT shield apply at once; any other
    [gateway] change needs a restart."""
    old_xdp, new_xdp = old.xdp, new.xdp
    in_place = (
        old_xdp is not None
        and new_xdp is not None
        and old_xdp != new_xdp
        and old_xdp.attach_keys == new_xdp.attach_keys
    )
    if in_place:
        old = dataclasses.replace(old, xdp=new_xdp)
    return old != new, in_place
