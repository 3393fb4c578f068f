"""The EAP users (`[gateway] eap_secrets`, gateway/eap_secrets.py) as the engine's
EapSecrets hook: the NT hashes EAP-MSCHAPv2 checks a client's answer against (and our
own, when we are the client). Read at start and again at every reload, so a changed
password or a new user counts from the next authentication on; a file that no longer
reads keeps the users as they were (and says so).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.issues import ConfigError
from gateway.config.schema import GatewayConfig
from gateway.daemon.feature import Feature, Host
from gateway.eap_secrets import EapSecrets, load_eap_secrets


class EapUsers(Feature):
    def __init__(self, daemon: Host, path: str | None) -> None:
        self.d = daemon
        self.path = path
        # a bad file stops the start (ConfigError, like the configuration itself)
        self.secrets = load_eap_secrets(Path(path)) if path else EapSecrets()

    def nt_hash(self, identity: bytes) -> bytes | None:
        """The engine's EapSecrets hook (ike/hooks.py)."""
        return self.secrets.nt_hash(identity)

    def reloaded(self, config: GatewayConfig) -> None:
        if self.path is None:
            return
        try:
            self.secrets = load_eap_secrets(Path(self.path))
        except ConfigError as exc:
            self.d.report(
                "eap-secrets-unchanged",
                logging.ERROR,
                file=self.path,
                message=f"EAP users not reloaded: {exc}",
            )
            return
        self.d.report("eap-secrets-loaded", file=self.path, users=len(self.secrets.users))

    def stats(self) -> Mapping[str, Any]:
        return {"eap_users": len(self.secrets.users)}
