"""A real FreeRADIUS (Debian `freeradius`, 3.2) for tests, in a network namespace of its
own with a config directory of its own.

It never reads the system's /etc/freeradius (`-d` points at the test's directory, which
holds the whole configuration: radiusd.conf, the users file, certificates) and listens
on 127.0.0.1:1812 inside its namespace only. Clients reach it with a socket made inside
that namespace (`FreeRadius.socket()`); the test process itself stays in the host
namespace. It runs in the foreground with full debugging (`-X`: one thread, every
request traced) into a log file the failing test can show; the namespace's removal ends
it (netns.Netns.close ends what we started there, by pid).

Configured: EAP with MS-CHAPv2 (passwords from the users file) as the default method and
EAP-TLS (server certificate and key, the CA that client certificates must chain to),
clients must send Message-Authenticator, no TLS session cache.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pyroute2.netns import popns, pushns

from gateway import netns

FREERADIUS = shutil.which("freeradius")
ADDRESS = "127.0.0.1"
PORT = 1812
READY = "Ready to process requests"


@dataclass(frozen=True)
class TlsFiles:
    """PEM: the server's certificate (then its chain), its key, and the client CA."""

    certificate: bytes
    key: bytes
    ca: bytes


@dataclass
class FreeRadius:
    ns: netns.Netns
    confdir: Path
    secret: bytes
    address: str = ADDRESS
    port: int = PORT

    @property
    def log_file(self) -> Path:
        return self.confdir / "radiusd.log"

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def socket(self) -> socket.socket:
        """A UDP socket inside the server's namespace (for RadiusClient.open)."""
        pushns(self.ns.name)
        try:
            return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        finally:
            popns()


def _quote(value: str) -> str:
    if any(c in value for c in '"\\\n'):
        raise ValueError(f"test value {value!r} needs no quoting in FreeRADIUS config")
    return f'"{value}"'


def _tls_section(tls: TlsFiles | None, confdir: Path, tls_max_version: str) -> str:
    if tls is None:
        return ""
    (confdir / "server.pem").write_bytes(tls.certificate)
    (confdir / "server.key").write_bytes(tls.key)
    (confdir / "server.key").chmod(0o600)
    (confdir / "ca.pem").write_bytes(tls.ca)
    return f"""
		tls-config tls-common {{
			private_key_file = ${{confdir}}/server.key
			certificate_file = ${{confdir}}/server.pem
			ca_file = ${{confdir}}/ca.pem
			ca_path = ${{confdir}}
			fragment_size = 1024
			tls_min_version = "1.2"
			tls_max_version = "{tls_max_version}"
			cache {{
				enable = no
			}}
			ocsp {{
				enable = no
			}}
		}}
		tls {{
			tls = tls-common
		}}"""


@dataclass(frozen=True)
class Config:
    """What the test wants served. `users`: name -> password; `replies`: name -> reply
    items of the users file (e.g. "Framed-IP-Address = 10.3.0.77")."""

    secret: bytes
    users: Mapping[str, str]
    replies: Mapping[str, Sequence[str]] = field(default_factory=dict)
    tls: TlsFiles | None = None
    tls_max_version: str = "1.2"


def write_config(confdir: Path, config: Config) -> None:
    secret, users, replies, tls = config.secret, config.users, config.replies, config.tls
    tls_max_version = config.tls_max_version
    confdir.mkdir(parents=True, exist_ok=True)
    for sub in ("log", "run"):
        (confdir / sub).mkdir(exist_ok=True)
    entries = []
    for name, pw in users.items():
        items = replies.get(name, ())
        entries.append(f"{name}\tCleartext-Password := {_quote(pw)}\n")
        entries.append("".join(f"\t{item},\n" for item in items[:-1]))
        entries.append(f"\t{items[-1]}\n" if items else "")
    (confdir / "users").write_text("".join(entries))
    (confdir / "radiusd.conf").write_text(
        f"""# written by tests/support/freeradius.py
prefix = /usr
exec_prefix = /usr
sysconfdir = /etc
localstatedir = /var
sbindir = ${{exec_prefix}}/sbin
raddbdir = {confdir}
confdir = ${{raddbdir}}
logdir = ${{raddbdir}}/log
run_dir = ${{raddbdir}}/run
db_dir = ${{raddbdir}}
libdir = /usr/lib/freeradius
pidfile = ${{run_dir}}/radiusd.pid
name = freeradius
max_request_time = 30
cleanup_delay = 2
max_requests = 1024
hostname_lookups = no
log {{
	destination = stdout
	auth = yes
}}
security {{
	allow_core_dumps = no
	max_attributes = 200
	reject_delay = 0
	status_server = no
}}
thread pool {{
	start_servers = 1
	max_servers = 2
	min_spare_servers = 1
	max_spare_servers = 2
	max_requests_per_server = 0
}}
client gateway {{
	ipaddr = {ADDRESS}
	secret = {_quote(secret.decode())}
	require_message_authenticator = yes
}}
modules {{
	files {{
		filename = ${{confdir}}/users
	}}
	mschap {{
	}}
	eap {{
		default_eap_type = mschapv2
		timer_expire = 60
		ignore_unknown_eap_types = no
		max_sessions = 64
		mschapv2 {{
		}}{_tls_section(tls, confdir, tls_max_version)}
	}}
}}
server default {{
	listen {{
		type = auth
		ipaddr = {ADDRESS}
		port = {PORT}
	}}
	authorize {{
		files
		eap {{
			ok = return
		}}
	}}
	authenticate {{
		Auth-Type MS-CHAP {{
			mschap
		}}
		eap
	}}
	post-auth {{
	}}
}}
"""
    )


@contextmanager
def freeradius(
    confdir: Path, config: Config, *, timeout: float = 20.0, ns: netns.Netns | None = None
) -> Iterator[FreeRadius]:
    """Start FreeRADIUS with the configuration above in a new namespace (or in `ns`, e.g.
    the gateway's, which then reaches it at 127.0.0.1:1812); stop it (and remove the
    namespace it made) afterwards, also when the body fails."""
    if FREERADIUS is None:
        raise RuntimeError("freeradius is not installed (deploy/debian-packages.txt lists it)")
    write_config(confdir, config)
    with contextlib.ExitStack() as stack:
        if ns is None:
            ns = stack.enter_context(netns.netns("gwrad"))
        server = FreeRadius(ns, confdir, config.secret)
        with server.log_file.open("wb") as log:
            proc = ns.popen(FREERADIUS, "-X", "-d", str(confdir), stdout=log, stderr=log)
        stack.callback(ns.stop, proc)
        deadline = time.monotonic() + timeout
        while READY not in server.log_text():
            if proc.poll() is not None:
                raise RuntimeError(
                    f"freeradius exited {proc.returncode}:\n{server.log_text()[-3000:]}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"freeradius not ready in {timeout}s:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
