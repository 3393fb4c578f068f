"""What ESP offload an interface offers, from its ethtool features (`gateway doctor`)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

from gateway.errors import GatewayError

ESP_FEATURES = (
    "esp-hw-offload",  # NETIF_F_HW_ESP: the device can do ESP crypto (crypto offload)
    "esp-tx-csum-hw-offload",  # NETIF_F_HW_ESP_TX_CSUM
    "tx-esp-segmentation",  # NETIF_F_GSO_ESP
)


@dataclass(frozen=True, slots=True)
class Feature:
    enabled: bool
    fixed: bool  # "[fixed]": the driver does not let it change

    @property
    def available(self) -> bool:
        return self.enabled or not self.fixed


@dataclass(frozen=True, slots=True)
class OffloadCapabilities:
    ifname: str
    features: dict[str, Feature]

    @property
    def crypto(self) -> bool:
        """Crypto offload possible: the device exposes esp-hw-offload (on or switchable)."""
        f = self.features.get("esp-hw-offload")
        return f is not None and f.available

    @property
    def summary(self) -> str:
        if not self.crypto:
            return "none (ESP runs in software)"
        return "crypto offload possible; packet offload is only known by trying (kernel >= 6.2)"


def parse_ethtool_features(text: str) -> dict[str, Feature]:
    out = {}
    for line in text.splitlines():
        name, sep, rest = line.strip().partition(":")
        if not sep or name not in ESP_FEATURES:
            continue
        words = rest.split()
        if words:
            out[name] = Feature(words[0] == "on", "[fixed]" in rest)
    return out


def offload_capabilities(ifname: str, netns: str | None = None) -> OffloadCapabilities:
    argv = ["ethtool", "-k", ifname]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except FileNotFoundError as exc:
        raise GatewayError("ethtool is not installed") from exc
    if proc.returncode != 0:
        raise GatewayError(f"ethtool -k {ifname}: {proc.stderr.strip() or 'failed'}")
    return OffloadCapabilities(ifname, parse_ethtool_features(proc.stdout))
