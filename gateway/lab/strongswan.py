"""strongSwan (charon-systemd + swanctl) as a real IKEv2 peer in a namespace (tests, the lab).

    with StrongSwan(ns, plugins=LIBIPSEC_PLUGINS) as sw:
        sw.start(swanctl_conf)          # writes strongswan.conf + swanctl.conf, loads them
        sw.initiate("net")              # or let our side initiate
        sas = sw.list_sas()             # parsed `swanctl --list-sas --raw`
    # stop(): charon ended by its pid, temp dir removed

One charon per namespace. Its files (config, vici socket, log) live in a private temp dir;
the vici socket path is given explicitly so several instances never collide. On the host
kernel (no ESP) use LIBIPSEC_PLUGINS: ESP in userspace over a TUN device; in the VM use
NETLINK_PLUGINS (real XFRM). Secrets only ever go into the temp dir (mode 0700).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from gateway.errors import GatewayError
from gateway.netns import Netns

_CRYPTO = "random nonce openssl aes sha1 sha2 hmac gcm chapoly curve25519 gmp kdf pem pkcs1 x509"
_COMMON = f"{_CRYPTO} pubkey revocation constraints socket-default vici updown"
LIBIPSEC_PLUGINS = f"{_COMMON} kernel-libipsec kernel-netlink"
NETLINK_PLUGINS = f"{_COMMON} kernel-netlink"

CHARON = "/usr/sbin/charon-systemd"
SWANCTL = "swanctl"


class StrongSwanError(GatewayError):
    pass


class StrongSwan:
    """One charon-systemd daemon in `ns`, driven over its own vici socket."""

    def __init__(
        self,
        ns: Netns,
        *,
        plugins: str = LIBIPSEC_PLUGINS,
        workdir: str | os.PathLike[str] | None = None,
        extra_charon: str = "",
    ) -> None:
        self.ns = ns
        self.plugins = plugins
        self.extra_charon = extra_charon
        self._own_dir = workdir is None
        self.dir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="swan-"))
        self.dir.chmod(0o700)
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # ------------------------------------------------------------------ files

    @property
    def uri(self) -> str:
        return f"unix://{self.dir / 'charon.vici'}"

    @property
    def log_path(self) -> Path:
        return self.dir / "charon.log"

    def strongswan_conf(self) -> str:
        return (
            "charon-systemd {\n"
            f"  load = {self.plugins}\n"
            "  port = 500\n"
            "  port_nat_t = 4500\n"
            "  retransmit_tries = 2\n"
            "  retransmit_timeout = 1.0\n"
            f"{self.extra_charon}"
            "  plugins {\n"
            f"    vici {{\n      socket = {self.uri}\n    }}\n"
            "  }\n"
            "  journal {\n    default = -1\n  }\n"
            "  filelog {\n"
            f"    charon {{\n      path = {self.log_path}\n      default = 1\n"
            "      ike = 2\n      cfg = 2\n      time_format = %b %e %T\n    }\n"
            "  }\n"
            "}\n"
        )

    def write_config(self, swanctl_conf: str) -> None:
        (self.dir / "strongswan.conf").write_text(self.strongswan_conf())
        conf = self.dir / "swanctl.conf"
        conf.write_text(swanctl_conf)
        conf.chmod(0o600)

    # ------------------------------------------------------------------ process

    def start(self, swanctl_conf: str | None = None, timeout: float = 15.0) -> None:
        """Start charon in the namespace, wait for its vici socket, load the config."""
        if swanctl_conf is not None:
            self.write_config(swanctl_conf)
        env = dict(os.environ, STRONGSWAN_CONF=str(self.dir / "strongswan.conf"))
        self._log = open(self.dir / "stderr.log", "wb")  # noqa: SIM115 (closed in stop)
        self.proc = self.ns.popen(CHARON, env=env, stdout=self._log, stderr=subprocess.STDOUT)
        sock = self.dir / "charon.vici"
        deadline = time.monotonic() + timeout
        while not sock.exists():
            if self.proc.poll() is not None:
                raise StrongSwanError(
                    f"charon exited {self.proc.returncode}: {self.logs()[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise StrongSwanError(f"charon's vici socket did not appear: {self.logs()[-2000:]}")
            time.sleep(0.05)
        if swanctl_conf is not None:
            # charon answers slowly on a loaded (or emulated) machine: the start's budget
            self.load(timeout=max(30.0, deadline - time.monotonic()))

    def stop(self) -> None:
        if self.proc is not None:
            self.ns.stop(self.proc)
            self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """SIGKILL: the peer vanishes without sending Deletes (a dead peer)."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
        self.stop()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> StrongSwan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def logs(self) -> str:
        out = []
        for name in ("stderr.log", "charon.log"):
            p = self.dir / name
            if p.exists():
                out.append(p.read_text(errors="replace"))
        return "\n".join(out)

    # ------------------------------------------------------------------ swanctl

    def swanctl(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        # swanctl wants the command first, then its options (--uri among them)
        proc = subprocess.run(
            [SWANCTL, args[0], "--uri", self.uri, *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise StrongSwanError(
                f"swanctl {' '.join(args)} exited {proc.returncode}: "
                f"{(proc.stdout + proc.stderr).strip()[-1500:]}"
            )
        return proc

    def swanctl_popen(self, *args: str) -> subprocess.Popen[str]:
        """A swanctl command in the background (e.g. --initiate while our side answers)."""
        return subprocess.Popen(
            [SWANCTL, args[0], "--uri", self.uri, *args[1:]],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def load(self, timeout: float = 30) -> None:
        self.swanctl("--load-all", "--file", str(self.dir / "swanctl.conf"), timeout=timeout)

    def initiate(self, child: str, ike: str | None = None, timeout: int = 20) -> str:
        args = ["--initiate", "--child", child, "--timeout", str(timeout)]
        if ike:
            args += ["--ike", ike]
        return self.swanctl(*args, timeout=timeout + 10).stdout

    def terminate_ike(self, ike: str, timeout: int = 10) -> str:
        return self.swanctl(
            "--terminate",
            "--ike",
            ike,
            "--timeout",
            str(timeout),
            check=False,
            timeout=timeout + 10,
        ).stdout

    def list_sas(self) -> list[dict[str, Any]]:
        """IKE SAs as dicts (vici keys: state, local-host, child-sas{...}, ...).

        Each dict gets "name" (the connection). Children are under "child-sas", keyed
        by strongSwan's "<child>-<id>" names, each with a "name".
        """
        out = self.swanctl("--list-sas", "--raw", "--noblock").stdout
        sas: list[dict[str, Any]] = []
        for line in out.splitlines():
            line = line.strip()
            if not line.startswith("list-sa event"):
                continue
            tree = parse_vici_raw(line[len("list-sa event") :])
            for name, body in tree.items():
                if isinstance(body, dict):
                    sas.append({"name": name, **body})
        return sas


def _tokens(text: str) -> Iterator[str]:
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
        elif c in "{}[]":
            yield c
            i += 1
        else:
            j = i
            while j < n and not text[j].isspace() and text[j] not in "{}[]":
                j += 1
            yield text[i:j]
            i = j


def parse_vici_raw(text: str) -> dict[str, Any]:
    """Parse swanctl's --raw dump: ``{a=1 sec {b=2} list=[x y]}`` -> nested dicts/lists."""
    toks = list(_tokens(text))
    pos = 0

    def section() -> dict[str, Any]:
        nonlocal pos
        out: dict[str, Any] = {}
        while pos < len(toks):
            t = toks[pos]
            pos += 1
            if t == "}":
                return out
            if t.endswith("=") and pos < len(toks) and toks[pos] == "[":
                pos += 1
                items = []
                while pos < len(toks) and toks[pos] != "]":
                    items.append(toks[pos])
                    pos += 1
                pos += 1
                out[t[:-1]] = items
            elif "=" in t:
                k, _, v = t.partition("=")
                out[k] = v
            elif pos < len(toks) and toks[pos] == "{":
                pos += 1
                out[t] = section()
        return out

    if toks and toks[0] == "{":
        pos = 1
    return section()
