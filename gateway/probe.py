"""What this machine can do for the gateway: kernel ESP, AES instructions, bcc, XDP, offload.

Each probe returns a Check with a verdict, what was seen, and how to fix a gap. Probes
that need the kernel work in a throw-away namespace and never change the host's XFRM
state, links or routes.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from gateway import netns as netns_mod


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: str  # "ok" | "missing" | "warn" | "info"
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


# A 36-byte key = AES-256 key + 4-byte salt, as RFC 4106 ESP wants.
_PROBE_KEY = "0x" + "11" * 36


def kernel_esp() -> Check:
    """Install one AES-GCM ESP state in a throw-away namespace (RFC 4106 via rfc4106(gcm(aes)))."""
    name = "kernel-esp"
    if os.geteuid() != 0:
        return Check(name, "warn", "not probed: needs root", "run as root")
    try:
        ns = netns_mod.create("gwprobe")
    except netns_mod.NetnsError as exc:
        return Check(name, "warn", f"not probed: {exc}", "check iproute2 and CAP_SYS_ADMIN")
    try:
        proc = ns.ip(
            "xfrm",
            "state",
            "add",
            "src",
            "192.0.2.1",
            "dst",
            "192.0.2.2",
            "proto",
            "esp",
            "spi",
            "0x100",
            "mode",
            "tunnel",
            "aead",
            "rfc4106(gcm(aes))",
            _PROBE_KEY,
            "128",
            check=False,
        )
    finally:
        ns.close()
    if proc.returncode == 0:
        return Check(name, "ok", f"kernel {platform.release()} installs AES-GCM ESP states")
    return Check(
        name,
        "missing",
        f"kernel {platform.release()} refuses an ESP state: {proc.stderr.strip()}",
        "boot a kernel with CONFIG_INET_ESP, CONFIG_INET6_ESP, CONFIG_CRYPTO_GCM and "
        "CONFIG_XFRM_USER (Debian's linux-image-amd64 has them); tests and the lab use "
        "that kernel in a virtme-ng VM automatically",
    )


def cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def aes_instructions(flags: set[str] | None = None) -> list[Check]:
    flags = cpu_flags() if flags is None else flags
    checks = []
    if "aes" in flags and "pclmulqdq" in flags:
        checks.append(Check("aes-ni", "ok", "AES-NI and PCLMULQDQ present (fast AES-GCM)"))
    else:
        checks.append(
            Check(
                "aes-ni",
                "missing",
                "no AES-NI/PCLMULQDQ: AES-GCM runs in generic C, several times slower",
                "prefer chacha20poly1305 proposals on this CPU, or pass the host CPU "
                "through to the VM (-cpu host)",
            )
        )
    if "vaes" in flags and "vpclmulqdq" in flags:
        checks.append(
            Check("vaes", "ok", "VAES/VPCLMULQDQ present (wide AES-GCM in newer kernels)")
        )
    else:
        checks.append(
            Check("vaes", "info", "no VAES/VPCLMULQDQ: AES-GCM uses 128-bit AES-NI paths")
        )
    return checks


def bcc_headers() -> Check:
    """bcc compiles at load time against /lib/modules/$(uname -r)/build."""
    build = Path("/lib/modules") / platform.release() / "build"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return Check(
            "bcc",
            "missing",
            "python bcc module not importable",
            "install Debian's python3-bpfcc (scripts/setup.sh links it into the venv)",
        )
    if not (build / "include").is_dir():
        return Check(
            "bcc",
            "missing",
            f"no kernel headers at {build}",
            "install linux-headers-amd64 and link /lib/modules/$(uname -r)/build to "
            "/usr/src/linux-headers-<ver>-amd64 (scripts/setup.sh does)",
        )
    if not shutil.which("clang"):
        return Check("bcc", "warn", "headers found but no clang on PATH", "apt-get install clang")
    return Check("bcc", "ok", f"bcc importable, headers at {build.resolve()}")


def bcc_compiles() -> Check:
    """Compile and load a trivial XDP program (no attach): proves the whole toolchain."""
    base = bcc_headers()
    if not base.ok:
        return base
    from bcc import BPF

    src = "#include <uapi/linux/bpf.h>\nint xdp_probe(struct xdp_md *ctx) { return XDP_PASS; }\n"
    try:
        b = BPF(text=src)
        b.load_func("xdp_probe", BPF.XDP)
        b.cleanup()
    except Exception as exc:  # bcc raises bare Exception on compile/load failure
        return Check("bcc", "missing", f"bcc failed to compile/load: {exc}", base.fix)
    return Check("bcc", "ok", "bcc compiles and loads XDP programs")


# NETDEV_XDP_ACT_* bits (include/uapi/linux/netdev.h, Linux >= 6.3)
XDP_FEATURE_BITS = {
    1: "basic",
    2: "redirect",
    4: "ndo-xmit",
    8: "xsk-zerocopy",
    16: "hw-offload",
    32: "rx-sg",
    64: "ndo-xmit-sg",
}


def xdp_features(ifname: str) -> set[str] | None:
    """XDP features the driver reports through the netdev genetlink family (None: unknown)."""
    from pyroute2.netlink import NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.exceptions import NetlinkError
    from pyroute2.netlink.generic import GenericNetlinkSocket

    class netdevmsg(genlmsg):
        nla_map = (
            ("NETDEV_A_DEV_UNSPEC", "none"),
            ("NETDEV_A_DEV_IFINDEX", "uint32"),
            ("NETDEV_A_DEV_PAD", "none"),
            ("NETDEV_A_DEV_XDP_FEATURES", "uint64"),
        )

    try:
        ifindex = socket_if_nametoindex(ifname)
    except OSError:
        return None
    sock = GenericNetlinkSocket()
    try:
        sock.bind("netdev", netdevmsg)
        msg = netdevmsg()
        msg["cmd"] = 1  # NETDEV_CMD_DEV_GET
        msg["version"] = 1
        msg["attrs"] = [("NETDEV_A_DEV_IFINDEX", ifindex)]
        replies = sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST)
        for reply in replies:
            value = reply.get_attr("NETDEV_A_DEV_XDP_FEATURES")
            if value is not None:
                return {name for bit, name in XDP_FEATURE_BITS.items() if value & bit}
    except (NetlinkError, OSError):
        return None
    finally:
        sock.close()
    return None


def socket_if_nametoindex(ifname: str) -> int:
    import socket

    return socket.if_nametoindex(ifname)


def xdp_native(ifname: str) -> Check:
    name = f"xdp-native[{ifname}]"
    feats = xdp_features(ifname)
    if feats is None:
        try:
            socket_if_nametoindex(ifname)
        except OSError:
            return Check(name, "missing", f"no interface {ifname}", "check the interface name")
        return Check(
            name,
            "warn",
            "driver does not report XDP features (kernel < 6.3?): generic XDP still works",
            "use a driver with native XDP (mlx5, ice, i40e, ixgbe, bnxt, virtio_net, veth)",
        )
    if "basic" in feats:
        extra = ", ".join(sorted(feats - {"basic"})) or "none"
        return Check(name, "ok", f"native XDP supported (also: {extra})")
    return Check(
        name,
        "missing",
        "driver has no native XDP: programs would run in slow generic (skb) mode",
        "use a NIC/driver with native XDP support",
    )


def esp_offload(ifname: str, *, trial: bool = False) -> Check:
    """ESP hardware offload of `ifname`: the `offload` modes worth setting for it (from
    ethtool's features), and with `trial` what the kernel grants a throw-away SA."""
    from gateway.errors import GatewayError
    from gateway.xfrm.offload import offload_capabilities

    name = f"esp-offload[{ifname}]"
    try:
        caps = offload_capabilities(ifname)
    except GatewayError as exc:
        return Check(name, "warn", str(exc), "install ethtool; check the interface name")
    detail = f"offload modes: {', '.join(caps.modes)}; {caps.summary}"
    if trial:
        detail += "; " + _offload_trials(ifname, caps.modes)
    if caps.crypto_enabled:
        return Check(name, "ok", detail)
    if not caps.crypto:
        return Check(
            name,
            "info",
            detail,
            "inline crypto needs a NIC with IPsec offload (e.g. mlx5 ConnectX-6 Dx, ice E810)",
        )
    return Check(name, "warn", detail, f"ethtool -K {ifname} esp-hw-offload on")


def _offload_trials(ifname: str, modes: tuple[str, ...]) -> str:
    """What the kernel does with a throw-away SA (AES-GCM-128, TEST-NET addresses, no
    policy) asking each offload mode; it is installed in and removed from this network
    namespace at once."""
    from gateway.xfrm import XfrmError, probe_offload

    results = []
    for mode in ("crypto", "packet"):
        try:
            trial = probe_offload(ifname, mode)  # type: ignore[arg-type]
        except XfrmError as exc:
            return f"trial install not possible: {exc}"
        if trial.granted:
            results.append(f"{mode} granted")
        else:
            results.append(f"{mode} refused ({trial.reason})")
    suffix = "" if "crypto" in modes else " (ethtool shows no ESP offload)"
    return "trial SAs (installed and removed here): " + ", ".join(results) + suffix


def run_all(
    interfaces: list[str], *, compile_bpf: bool = True, offload_trial: bool = False
) -> list[Check]:
    checks = [kernel_esp(), *aes_instructions()]
    checks.append(bcc_compiles() if compile_bpf else bcc_headers())
    for ifname in interfaces:
        checks.append(xdp_native(ifname))
        checks.append(esp_offload(ifname, trial=offload_trial))
    return checks
