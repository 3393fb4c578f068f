"""gateway/config/: the contract config parses as written; every bad input is reported
with its key path and line, all at once; secrets never leak into errors or reprs."""

from __future__ import annotations

import json
import os
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import cli
from gateway.config.reader import ConfigError, key_lines, load_config, parse_config
from gateway.config.schema import Secret
from gateway.config.values import parse_duration, parse_listen, parse_size

# The minimal config of issue 5's contract, verbatim.
CONTRACT = """\
[gateway]
listen = ["192.0.2.1"]
control_socket = "/run/gateway/control.sock"
metrics_listen = "127.0.0.1:9810"
dataplane = "xfrm"            # or "none"

[connections.east]
local_addrs = ["192.0.2.1"]
remote_addrs = ["192.0.2.2"]
ike_proposals = ["aes256gcm16-prfsha384-x25519"]
local = { auth = "psk", id = "gw-west" }
remote = { auth = "psk", id = "gw-east" }
psk = "lab-secret-123456"     # or psk_file = "/etc/gateway/east.psk"
dpd_delay = "10s"
rekey_time = "4h"

[connections.east.children.net]
local_ts = ["10.1.0.0/24"]
remote_ts = ["10.2.0.0/24"]
esp_proposals = ["aes256gcm16"]
mode = "tunnel"
start_action = "start"        # or "none" / "trap"
rekey_time = "1h"
"""

SECRET = "lab-secret-123456"


def errors_of(text: str, base_dir: Path | None = None) -> list[tuple[str, int | None, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), source="t.toml", base_dir=base_dir)
    return [(i.path, i.line, i.message) for i in info.value.issues]


def paths_of(text: str, base_dir: Path | None = None) -> list[str]:
    return [p for p, _, _ in errors_of(text, base_dir)]


def test_contract_config_parses_as_written() -> None:
    config = parse_config(CONTRACT)
    g = config.gateway
    assert g.listen == ("192.0.2.1",)
    assert g.control_socket == "/run/gateway/control.sock"
    assert g.metrics_listen == ("127.0.0.1", 9810)
    assert g.dataplane == "xfrm"
    (east,) = config.connections
    assert east.name == "east"
    assert east.local_addrs == ("192.0.2.1",) and east.remote_addrs == ("192.0.2.2",)
    assert east.ike_proposals == ("aes256gcm16-prfsha384-x25519",)
    assert (east.local.auth, east.local.id) == ("psk", "gw-west")
    assert (east.remote.auth, east.remote.id) == ("psk", "gw-east")
    assert east.psk == Secret(SECRET.encode())
    assert east.dpd_delay == 10 and east.rekey_time == 4 * 3600
    # swanctl.conf defaults: over_time 10% of rekey_time, rand_time = over_time
    assert east.over_time == pytest.approx(1440) and east.rand_time == pytest.approx(1440)
    (net,) = east.children
    assert net.local_ts == ("10.1.0.0/24",) and net.remote_ts == ("10.2.0.0/24",)
    assert net.esp_proposals == ("aes256gcm16",)
    assert (net.mode, net.start_action, net.rekey_time) == ("tunnel", "start", 3600)
    assert net.life_time == pytest.approx(3960) and net.rand_time == pytest.approx(360)
    assert config.connection("east") is east and east.child("net") is net
    assert config.connection("west") is None


def test_config_is_frozen_and_comparable() -> None:
    a, b = parse_config(CONTRACT), parse_config(CONTRACT)
    assert a == b
    with pytest.raises(AttributeError):
        a.gateway.dataplane = "none"  # type: ignore[misc]
    changed = parse_config(CONTRACT.replace('rekey_time = "1h"', 'rekey_time = "2h"'))
    assert changed.connections[0] != a.connections[0]


def test_retransmission_settings() -> None:
    g = parse_config(
        '[gateway]\nretransmit_timeout = "1s"\nretransmit_base = 2\nretransmit_tries = 2\n'
    ).gateway
    assert (g.retransmit_timeout, g.retransmit_base, g.retransmit_tries) == (1.0, 2.0, 2)
    g = parse_config('[gateway]\nretransmit_timeout = "0.5"\n').gateway
    assert g.retransmit_timeout == 0.5


def test_defaults_for_an_empty_file() -> None:
    config = parse_config("")
    assert config.connections == ()
    assert config.gateway.listen == ("0.0.0.0", "::")
    assert config.gateway.metrics_listen == ("127.0.0.1", 9810)
    assert config.gateway.dataplane == "xfrm"


def test_secret_never_in_repr_or_str() -> None:
    config = parse_config(CONTRACT)
    for text in (repr(config), str(config), repr(config.connections[0]), str(Secret(b"x"))):
        assert SECRET not in text
    assert "redacted" in repr(config.connections[0].psk)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10s", 10), ("5m", 300), ("4h", 14400), ("1d", 86400), ("90", 90), (30, 30), ("1.5h", 5400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["10 parsecs", "-5s", -1, True, "h", "", "1w", [1]])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


def test_proposals_checked_by_the_engine_and_default_expanded() -> None:
    c = parse_config(conn('ike_proposals = ["default", "aes128-sha256-ecp256"]')).connections[0]
    assert c.ike_proposals == ("aes256gcm16-prfsha384-x25519", "aes128-sha256-ecp256")
    c = parse_config(conn("", 'esp_proposals = ["chacha20poly1305", "default"]')).connections[0]
    assert c.children[0].esp_proposals == ("chacha20poly1305", "aes256gcm16", "aes128-sha256")
    ((path, _, message),) = errors_of(conn('ike_proposals = ["aes256gcm16-prfsha384-x99"]'))
    assert path == "connections.c.ike_proposals[0]"
    assert message == (
        "IKE proposal 'aes256gcm16-prfsha384-x99': unknown or unsupported algorithm 'x99'"
    )
    ((path, _, message),) = errors_of(conn("", 'esp_proposals = "aes256gcm16-sha256"'))
    assert path == "connections.c.children.k.esp_proposals"
    assert "AEAD encryption takes no integrity algorithm" in message


def test_sizes() -> None:
    assert parse_size("500k") == 500 * 1024 and parse_size("2G") == 2 << 30
    assert parse_size(1000) == 1000
    for bad in ("1T", -1, "x", False):
        with pytest.raises(ValueError):
            parse_size(bad)


def test_listen_addresses() -> None:
    assert parse_listen("127.0.0.1") == ("127.0.0.1", 9810)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
    assert parse_listen("::1") == ("::1", 9810)
    assert parse_listen("off") is None
    for bad in ("localhost:80", "[::1", "1.2.3.4:0", "[::1]x", "1.2.3.4:http"):
        with pytest.raises(ValueError):
            parse_listen(bad)


def test_every_error_reported_at_once_with_path_and_line() -> None:
    errors = errors_of(
        """\
        [gateway]
        listen = ["192.0.2.300"]
        dataplane = "dpdk"
        lisen = 3

        [connections.east]
        local_addrs = ["192.0.2.1"]
        remote_addrs = ["192.0.2.2"]
        ike_proposals = ["aes256gcm16-prfsha384-x25519", "bad proposal"]
        local = { auth = "pks", id = "gw-west" }
        remote = { auth = "psk", id = "" }
        psk = "lab-secret-123456"
        dpd_delay = "10 parsecs"

        [connections.east.children.net]
        local_ts = ["10.1.0.1/24", "dynamic"]
        mode = "tunel"
        life_time = "30m"
        """
    )
    assert errors == [
        ("gateway.listen[0]", 2, "'192.0.2.300' is not an IP address"),
        ("gateway.dataplane", 3, "'dpdk' is not one of: xfrm, none"),
        ("gateway.lisen", 4, "unknown key (did you mean 'listen'?)"),
        (
            "connections.east.ike_proposals[1]",
            9,
            "'bad proposal' is not a proposal like \"aes256gcm16-prfsha384-x25519\"",
        ),
        (
            "connections.east.local.auth",
            10,
            "'pks' is not one of: psk, pubkey, eap-mschapv2, eap-tls, eap-radius",
        ),
        ("connections.east.remote.id", 11, "must not be empty"),
        (
            "connections.east.dpd_delay",
            13,
            'expected a duration like "10s", "5m", "4h" or "1d", got \'10 parsecs\'',
        ),
        (
            "connections.east.children.net.local_ts[0]",
            16,
            "'10.1.0.1/24' has host bits set (did you mean the network?)",
        ),
        ("connections.east.children.net.mode", 17, "'tunel' is not one of: tunnel, transport"),
        ("connections.east.children.net.life_time", 18, "must be longer than rekey_time (3600s)"),
    ]


def test_error_message_format_lists_file_line_and_path() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config('[gateway]\ndataplane = "dpdk"\n', source="gw.toml")
    assert str(info.value) == (
        "1 error in configuration:\n"
        "  gw.toml:2: gateway.dataplane: 'dpdk' is not one of: xfrm, none"
    )


def test_toml_syntax_error_has_line() -> None:
    assert errors_of('[gateway]\nlisten = ["1.2.3.4"\n') == [("", 2, "TOML syntax: Unclosed array")]
    (_, line, message) = errors_of("[gateway]\n\nlisten = = 3\n")[0]
    assert line == 3 and message.startswith("TOML syntax:")


@pytest.mark.parametrize(
    ("snippet", "path", "message"),
    [
        ('listen = "1.2.3.4"', "gateway.listen", None),  # a single string is a 1-list: ok
        ("listen = 5", "gateway.listen", "expected an array of strings, got an integer"),
        ("listen = []", "gateway.listen", "must not be empty"),
        ("listen = [5]", "gateway.listen[0]", "expected a string, got an integer"),
        ("port = 70000", "gateway.port", "70000 is out of range 0..65535"),
        ("port = 4500", "gateway.port", "port and port_nat_t must differ (both 4500)"),
        ("workers = 0", "gateway.workers", "0 is out of range 1..64"),
        ("workers = 65", "gateway.workers", "65 is out of range 1..64"),
        ('retransmit_timeout = "0s"', "gateway.retransmit_timeout", "must be more than 0"),
        ("retransmit_base = 0.5", "gateway.retransmit_base", "0.5 is out of range 1.0..10.0"),
        ("retransmit_tries = 99", "gateway.retransmit_tries", "99 is out of range 0..30"),
        ('workers = "2"', "gateway.workers", "expected an integer, got a string"),
        ('control_socket = ""', "gateway.control_socket", "must not be empty"),
        ('log_level = "loud"', "gateway.log_level", None),
        ("metrics_listen = 9810", "gateway.metrics_listen", None),
        ('control_socket = "/' + "x" * 120 + '"', "gateway.control_socket", None),
    ],
)
def test_gateway_section_errors(snippet: str, path: str, message: str | None) -> None:
    text = f"[gateway]\n{snippet}\n"
    if snippet == 'listen = "1.2.3.4"':
        assert parse_config(text).gateway.listen == ("1.2.3.4",)
        return
    errors = errors_of(text)
    assert [p for p, _, _ in errors] == [path]
    assert errors[0][1] == 2
    if message is not None:
        assert errors[0][2] == message


def test_xdp_with_workers() -> None:
    """Workers share one set of XDP/TC programs (gateway/workers/xdpshare.py): accepted."""
    config = parse_config('[gateway]\nworkers = 2\n[gateway.xdp]\nwan_interface = "eth0"\n')
    assert config.gateway.workers == 2 and config.gateway.xdp is not None


def test_xdp_section() -> None:
    config = parse_config(
        '[gateway.xdp]\nwan_interface = "eth0"\nlan_interface = "eth1"\nmss_clamp = 1360\n'
    )
    assert config.gateway.xdp is not None
    assert (config.gateway.xdp.wan_interface, config.gateway.xdp.mss_clamp) == ("eth0", 1360)

    assert paths_of('[gateway.xdp]\nwan_interface = "a-very-long-interface-name"\n') == [
        "gateway.xdp.wan_interface"
    ]
    assert paths_of('[gateway.xdp]\nwan_interface = "eth0"\nmss_clamp = 100\n') == [
        "gateway.xdp.mss_clamp"
    ]
    assert paths_of("[gateway.xdp]\nmss_clamp = 1300\n") == ["gateway.xdp"]
    assert paths_of('[gateway]\nxdp = "eth0"\n') == ["gateway.xdp"]


def test_xdp_steering_drop_shield_and_slot_space() -> None:
    xdp = parse_config('[gateway.xdp]\nwan_interface = "eth0"\n').gateway.xdp
    assert xdp is not None
    assert (xdp.steer_cpus, xdp.drop_unknown_spi, xdp.ike_init_rate, xdp.ike_init_budget) == (
        (),
        False,
        None,
        None,
    )
    assert (xdp.max_child_sas, xdp.slot_bits) == (65536, 16)
    text = (
        '[gateway.xdp]\nwan_interface = "eth0"\nsteer_cpus = [1, 0]\ndrop_unknown_spi = true\n'
        "ike_init_rate = 20\nike_init_burst = 40\nike_init_budget = 500\n"
        "ike_init_budget_burst = 1000\nmax_child_sas = 1048576\n"
    )
    xdp = parse_config(text).gateway.xdp
    assert xdp is not None
    assert (xdp.steer_cpus, xdp.drop_unknown_spi) == ((1, 0), True)
    assert (xdp.ike_init_rate, xdp.ike_init_burst) == (20.0, 40)
    assert (xdp.ike_init_budget, xdp.ike_init_budget_burst) == (500.0, 1000)
    assert (xdp.max_child_sas, xdp.slot_bits) == (1 << 20, 20)
    xdp = parse_config('[gateway.xdp]\nwan_interface = "e"\nmax_child_sas = 100000\n').gateway.xdp
    assert xdp is not None and xdp.slot_bits == 17  # rounded up to a power of two
    all_cpus = parse_config('[gateway.xdp]\nwan_interface = "e"\nsteer_cpus = "all"\n')
    assert all_cpus.gateway.xdp is not None and all_cpus.gateway.xdp.steer_cpus == "all"

    # reload: steering, drop and shield change in place; interfaces and slots do not
    def attach_keys(text: str) -> object:
        config = parse_config(text).gateway.xdp
        assert config is not None
        return config.attach_keys

    live = text.replace("[1, 0]", "[0]").replace("= 20", "= 5").replace("true", "false")
    assert attach_keys(live) == attach_keys(text)
    assert attach_keys(text.replace("1048576", "100000")) != attach_keys(text)


@pytest.mark.parametrize(
    ("body", "path", "words"),
    [
        ("max_child_sas = 1048577", "gateway.xdp.max_child_sas", "out of range 2..1048576"),
        ("steer_cpus = [1, 1]", "gateway.xdp.steer_cpus", "listed twice"),
        ('steer_cpus = "some"', "gateway.xdp.steer_cpus", '"all"'),
        ("steer_cpus = []", "gateway.xdp.steer_cpus", '"all"'),
        ("ike_init_rate = 0", "gateway.xdp.ike_init_rate", "out of range"),
        ("ike_init_burst = 5", "gateway.xdp.ike_init_burst", "needs ike_init_rate"),
        ("ike_init_budget_burst = 5", "gateway.xdp.ike_init_budget_burst", "needs ike_init_budget"),
        ("drop_unknown_spi = 1", "gateway.xdp.drop_unknown_spi", "true/false"),
        ('counters_intrval = "1s"', "gateway.xdp.counters_intrval", "unknown key"),
    ],
)
def test_xdp_key_errors(body: str, path: str, words: str) -> None:
    ((where, _line, message),) = errors_of(f'[gateway.xdp]\nwan_interface = "eth0"\n{body}\n')
    assert where == path and words in message, message


def test_xdp_wan_side_keys_need_a_wan_interface() -> None:
    text = '[gateway.xdp]\nlan_interface = "eth1"\nike_init_budget = 100\ndrop_unknown_spi = true\n'
    assert paths_of(text) == ["gateway.xdp.ike_init_budget", "gateway.xdp.drop_unknown_spi"]


def test_counters_interval() -> None:
    assert parse_config("").gateway.counters_interval == 1.0
    assert parse_config('[gateway]\ncounters_interval = "5s"\n').gateway.counters_interval == 5
    assert parse_config("[gateway]\ncounters_interval = 0\n").gateway.counters_interval == 0
    assert paths_of('[gateway]\ncounters_interval = "2h"\n') == ["gateway.counters_interval"]


def test_xdp_mss_clamp_is_true_by_default_and_false_turns_it_off() -> None:
    # issue 6 contract: `mss_clamp = true` (the default) derives the MSS from the tunnel MTU
    base = '[gateway.xdp]\nwan_interface = "eth1"\nlan_interface = "eth2"\n'
    for extra, expected in (
        ("", True),
        ("mss_clamp = true\n", True),
        ("mss_clamp = false\n", None),
    ):
        xdp = parse_config(base + extra).gateway.xdp
        assert xdp is not None and xdp.mss_clamp == expected


def conn(body: str, child: str = "") -> str:
    text = (
        "[connections.c]\n"
        + ("" if "remote_addrs" in body else 'remote_addrs = ["192.0.2.2"]\n')
        + ("" if "local_addrs" in body else 'local_addrs = ["192.0.2.1"]\n')
        + 'local = { auth = "psk", id = "a" }\n'
        'remote = { auth = "psk", id = "b" }\n'
        f'psk = "{SECRET}"\n' + textwrap.dedent(body)
    )
    if child:
        text += "[connections.c.children.k]\n" + textwrap.dedent(child)
    return text


@pytest.mark.parametrize(
    ("body", "child", "paths"),
    [
        ('remote_addrs = ["example.org"]', "", ["connections.c.remote_addrs[0]"]),
        ('local_addrs = ["192.0.2.0/33"]', "", ["connections.c.local_addrs[0]"]),
        (
            'local_addrs = ["192.0.2.1"]\nremote_addrs = ["2001:db8::2"]',
            "",
            ["connections.c.remote_addrs"],
        ),
        ('ike_proposals = ["aes256--x25519"]', "", ["connections.c.ike_proposals[0]"]),
        ("mobike = 3", "", ["connections.c.mobike"]),
        ('fragmentation = "sometimes"', "", ["connections.c.fragmentation"]),
        ("remote_port = 0", "", ["connections.c.remote_port"]),
        ('rekey_time = "1h"\nrand_time = "2h"', "", ["connections.c.rand_time"]),
        ('rand_time = "1m"\njitter = "2m"', "", ["connections.c.jitter"]),
        ('offload = "maybe"', "", ["connections.c.offload"]),
        ("children = 3", "", ["connections.c.children"]),
        ("remte_addrs = []", "", ["connections.c.remte_addrs"]),
        (
            "",
            'local_ts = ["10.0.0.0/8"]\nremot_ts = ["10.1.0.0/16"]',
            ["connections.c.children.k.remot_ts"],
        ),
        ("", 'remote_ts = "10.0.0.0/8, bogus"', ["connections.c.children.k.remote_ts"]),
        ("", 'esp_proposals = ["aes256gcm16", ""]', ["connections.c.children.k.esp_proposals[1]"]),
        ("", 'start_action = "restart"', ["connections.c.children.k.start_action"]),
        ("", 'dpd_action = "panic"', ["connections.c.children.k.dpd_action"]),
        ('redirect_to = "a b"', "", ["connections.c.redirect_to"]),
        ("redirect_to = 7", "", ["connections.c.redirect_to"]),
        ('redirect_on = "later"', "", ["connections.c.redirect_on"]),
        ("follow_redirects = 1", "", ["connections.c.follow_redirects"]),
        ("", 'rekey_time = "1h"\nrand_time = "1h"', ["connections.c.children.k.rand_time"]),
        ("", 'rekey_bytes = "1G"\nlife_bytes = "500M"', ["connections.c.children.k.life_bytes"]),
        ("", "replay_window = -1", ["connections.c.children.k.replay_window"]),
        (
            "",
            'mode = "transport"\nlocal_ts = ["10.0.0.0/24"]',
            ["connections.c.children.k.local_ts"],
        ),
        ("", 'offload = "magic"', ["connections.c.children.k.offload"]),
    ],
)
def test_connection_errors(body: str, child: str, paths: list[str]) -> None:
    assert paths_of(conn(body, child)) == paths


def test_redirect_keys() -> None:
    c = parse_config(conn("")).connections[0]
    assert (c.follow_redirects, c.redirect_to, c.redirect_on) == (True, None, "init")
    text = 'redirect_to = "gw2.example"\nredirect_on = "auth"\nfollow_redirects = false\n'
    c = parse_config(conn(text)).connections[0]
    assert (c.follow_redirects, c.redirect_to, c.redirect_on) == (False, "gw2.example", "auth")
    c = parse_config(conn('redirect_to = "2001:DB8::7"\n')).connections[0]
    assert c.redirect_to == "2001:db8::7"


def test_keyingtries_range() -> None:
    assert parse_config(conn("")).connections[0].keyingtries == 1
    assert parse_config(conn("keyingtries = 0")).connections[0].keyingtries == 0
    assert paths_of(conn("keyingtries = -1")) == ["connections.c.keyingtries"]


def test_child_inherits_connection_offload_and_accepts_good_values() -> None:
    config = parse_config(
        conn(
            'offload = "auto"\nmobike = false\nfragmentation = true\n',
            'mode = "transport"\nlocal_ts = ["192.0.2.1/32"]\nrekey_bytes = "1G"\n'
            "replay_window = 1024\n",
        )
    )
    c = config.connections[0]
    assert (c.mobike, c.fragmentation) == (False, "yes")
    k = c.children[0]
    assert (k.offload, k.mode, k.rekey_bytes, k.replay_window) == (
        "auto",
        "transport",
        1 << 30,
        1024,
    )
    assert k.life_bytes == int((1 << 30) * 1.1)


def test_offload_interface_and_set_mark_out() -> None:
    """offload_interface: a connection default the children inherit; set_mark_out: per
    child, an integer or a string in any base."""
    c = parse_config(
        conn('offload = "crypto"\noffload_interface = "nsim0"\n', 'set_mark_out = "0x64"\n')
    ).connections[0]
    k = c.children[0]
    assert (k.offload, k.offload_interface, k.set_mark_out) == ("crypto", "nsim0", 0x64)
    k = parse_config(conn("", 'offload_interface = "eth1"\nset_mark_out = 7\n'))
    child = k.connections[0].children[0]
    assert (child.offload, child.offload_interface, child.set_mark_out) == ("no", "eth1", 7)
    assert (
        parse_config(conn("", 'mode = "tunnel"\n')).connections[0].children[0].set_mark_out is None
    )
    for bad in ('set_mark_out = "0x64/0xff"', "set_mark_out = 0", "set_mark_out = true"):
        assert paths_of(conn("", bad + "\n")) == ["connections.c.children.k.set_mark_out"]
    assert paths_of(conn('offload_interface = "a/b"\n')) == ["connections.c.offload_interface"]


def test_default_jitter_follows_life_time() -> None:
    # swanctl.conf: rand_time defaults to life_time - rekey_time, however large
    k = parse_config(conn("", 'life_time = "2h"\n')).connections[0].children[0]
    assert (k.rekey_time, k.life_time, k.rand_time) == (3600, 7200, 3600)


def test_missing_auth_and_psk() -> None:
    assert paths_of('[connections.c]\nremote_addrs = "192.0.2.2"\n') == [
        "connections.c.local",
        "connections.c.remote",
    ]
    assert paths_of('[connections.c]\nlocal = { id = "a" }\nremote = { auth = "psk" }\n') == [
        "connections.c.psk",  # no psk line: reported at the connection's header, line 1
        "connections.c.local.auth",
    ]
    # a PSK nobody uses is a mistake worth telling
    text = conn("").replace('auth = "psk"', 'auth = "pubkey"')
    assert "connections.c.psk" in paths_of(text)


def test_start_needs_concrete_remote() -> None:
    text = conn("", 'start_action = "start"').replace('["192.0.2.2"]', '["%any"]')
    assert paths_of(text) == ["connections.c.children.k.start_action"]
    text = conn('local_addrs = ["192.0.2.0/24"]\n', 'start_action = "start"')
    ((path, _, message),) = errors_of(text)
    assert message == "start needs a concrete address in local_addrs to initiate from"
    # trap initiates too (on the first packet)
    text = conn("", 'start_action = "trap"').replace('["192.0.2.2"]', '["%any"]')
    ((path, _, message),) = errors_of(text)
    assert path == "connections.c.children.k.start_action"
    assert message == "trap needs a concrete address in remote_addrs to initiate to"
    assert (
        parse_config(conn("", 'start_action = "trap"')).connections[0].children[0].start_action
        == "trap"
    )


def test_bad_names() -> None:
    assert paths_of(conn("").replace("connections.c]", 'connections."a.b"]')) == ["connections.a.b"]
    assert paths_of(conn("") + '[connections.c.children."x y"]\n') == ["connections.c.children.x y"]


def test_psk_file(tmp_path: Path) -> None:
    psk = tmp_path / "east.psk"
    psk.write_text(SECRET + "\n")
    psk.chmod(0o600)
    text = conn("").replace(f'psk = "{SECRET}"', 'psk_file = "east.psk"')
    config = parse_config(text, base_dir=tmp_path)
    assert config.connections[0].psk == Secret(SECRET.encode())  # trailing newline stripped

    psk.chmod(0o644)
    ((path, line, message),) = errors_of(text, tmp_path)
    assert (path, line) == ("connections.c.psk_file", 6)
    assert "accessible by group/others (mode 0644)" in message and SECRET not in message

    assert paths_of(text.replace("east.psk", "missing.psk"), tmp_path) == ["connections.c.psk_file"]
    both = conn("").replace(f'psk = "{SECRET}"', f'psk = "{SECRET}"\npsk_file = "east.psk"')
    psk.chmod(0o600)
    assert paths_of(both, tmp_path) == ["connections.c.psk_file"]


def test_short_psk_error_hides_the_secret() -> None:
    messages = [m for _, _, m in errors_of(conn("").replace(SECRET, "hunter2"))]
    assert messages == ["pre-shared key too short (7 bytes; at least 16)"]
    assert not any("hunter2" in m for m in messages)


def test_pubkey_files(tmp_path: Path) -> None:
    cert = tmp_path / "gw.pem"
    cert.write_text("cert")
    key = tmp_path / "gw.key"
    key.write_text("key")
    key.chmod(0o600)
    ca = tmp_path / "ca.pem"
    ca.write_text("ca")
    text = (
        "[connections.c]\n"
        'remote_addrs = ["192.0.2.2"]\n'
        'local = { auth = "pubkey", certs = ["gw.pem"], key = "gw.key" }\n'
        'remote = { auth = "pubkey", cacerts = ["ca.pem"] }\n'
    )
    c = parse_config(text, base_dir=tmp_path).connections[0]
    assert c.local.certs == (str(cert),) and c.local.key == str(key)
    assert c.remote.cacerts == (str(ca),)
    key.chmod(0o640)
    assert paths_of(text, tmp_path) == ["connections.c.local.key"]
    key.chmod(0o600)
    assert paths_of(text.replace('certs = ["gw.pem"], ', ""), tmp_path) == [
        "connections.c.local.certs"
    ]
    assert paths_of(text.replace('cacerts = ["ca.pem"]', 'id = "x"'), tmp_path) == [
        "connections.c.remote.cacerts"
    ]
    assert paths_of(text.replace("ca.pem", "nope.pem"), tmp_path) == [
        "connections.c.remote.cacerts[0]"
    ]


def test_wrong_top_level_types() -> None:
    assert paths_of('gateway = 1\nconnections = "x"\nextra = 2\n') == [
        "gateway",
        "connections",
        "extra",
    ]
    assert paths_of("[connections]\nc = 5\n") == ["connections.c"]
    assert paths_of(conn("").replace('local = { auth = "psk", id = "a" }', 'local = "psk"')) == [
        "connections.c.local"
    ]


def test_key_lines_handles_headers_dotted_and_inline_keys() -> None:
    lines = key_lines(
        '[gateway]\na = 1\n[connections."x.y".children.z]\nlocal.auth = "psk"\n'
        'remote = { auth = "psk", id = "b" }\ns = """\nk = 1\n"""\nafter = 2\n'
    )
    assert lines[("gateway", "a")] == 2
    assert lines[("connections", "x.y", "children", "z")] == 3
    assert lines[("connections", "x.y", "children", "z", "local", "auth")] == 4
    assert lines[("connections", "x.y", "children", "z", "remote", "id")] == 5
    assert ("connections", "x.y", "children", "z", "k") not in lines
    assert lines[("connections", "x.y", "children", "z", "after")] == 9


def test_load_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        load_config(binary)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_any_text_parses_or_raises_config_error(text: str) -> None:
    try:
        parse_config(text)
    except ConfigError:
        pass


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "local_addrs",
                "remote_addrs",
                "dpd_delay",
                "rekey_time",
                "mobike",
                "psk",
                "ike_proposals",
                "local",
                "remote",
                "children",
                "encap",
                "keyingtries",
            ]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=12),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(st.text(max_size=6), inner, max_size=3)
            ),
            max_leaves=6,
        ).filter(lambda v: v is not None),
    )
)
def test_any_structure_parses_or_raises_config_error(body: dict[str, object]) -> None:
    # TOML writing is not in the stdlib; JSON strings and numbers are valid TOML values.
    lines = ["[connections.c]"]
    for key, value in body.items():
        lines.append(f"{key} = {_toml(value)}")
    try:
        parse_config("\n".join(lines) + "\n")
    except ConfigError:
        pass


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value if v is not None) + "]"
    if isinstance(value, dict):
        items = ", ".join(
            f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items() if v is not None
        )
        return "{ " + items + " }"
    raise AssertionError(value)


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "gw.toml"
    good.write_text(CONTRACT)
    assert cli.main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK, 1 connection(s), 1 child SA(s)" in out and SECRET not in out
    assert cli.main(["check-config", "--json", str(good)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] is True and summary["connections"][0]["name"] == "east"
    assert SECRET not in json.dumps(summary)

    bad = tmp_path / "bad.toml"
    bad.write_text(CONTRACT.replace('"tunnel"', '"tunel"').replace('"10s"', '"x"'))
    assert cli.main(["check-config", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gateway check-config: 2 errors in configuration:")
    assert f"{bad}:14: connections.east.dpd_delay" in err
    assert f"{bad}:21: connections.east.children.net.mode" in err
    assert "Traceback" not in err
    assert cli.main(["check-config", "--json", str(bad)]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert [(e["path"], e["line"]) for e in report["errors"]] == [
        ("connections.east.dpd_delay", 14),
        ("connections.east.children.net.mode", 21),
    ]
    assert cli.main(["check-config", str(tmp_path / "none.toml")]) == 1
    assert "cannot read" in capsys.readouterr().err


def test_secret_file_owner_check(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create a file owned by another user")
    psk = tmp_path / "p.psk"
    psk.write_text(SECRET)
    psk.chmod(0o600)
    os.chown(psk, 65534, 65534)
    text = conn("").replace(f'psk = "{SECRET}"', 'psk_file = "p.psk"')
    ((_, _, message),) = errors_of(text, tmp_path)
    assert "must be owned by root" in message


def test_metrics_aggregate_is_child_or_connection() -> None:
    assert parse_config("").gateway.metrics_aggregate == "child"
    assert (
        parse_config('[gateway]\nmetrics_aggregate = "connection"\n').gateway.metrics_aggregate
        == "connection"
    )
    assert paths_of('[gateway]\nmetrics_aggregate = "spi"\n') == ["gateway.metrics_aggregate"]


def test_workers_accepted() -> None:
    assert parse_config("[gateway]\nworkers = 4\n").gateway.workers == 4
