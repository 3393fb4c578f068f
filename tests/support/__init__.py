"""What the tests share (one place; no test module imports another).

fixtures.py       the fixtures (a plugin of tests/conftest.py): namespaces, run_dir, swan_lab
daemon.py         our daemon in a namespace (`Gateway`), `gateway ctl`, wait_for, configs
inmemory.py       two in-process daemons joined in memory (unit tests)
fake_engine.py    a scripted IKE engine and a recording `none` data plane (unit tests)
control.py        a stand-in ControlBackend (control API tests)
xdp.py            a stand-in for the bcc loader (XDP adapter tests)
observability.py  synthetic SAs and gateway state for the metrics and console tests
pair.py           two daemons as the metrics and console host tests observe them
kernel.py         two daemons over kernel ESP: addresses, states, policies, ping
xfrm.py           the XFRM kernel tests' addressing, keys, traffic, `ip xfrm` parsing
strongswan.py     charon as a peer: `charon()`, the daemon-vs-charon scenario
swanctl_peer.py   charon's swanctl.conf for the daemon interop tests
ike_udp.py        our engine behind a UDP driver in a namespace
esp.py            ESP packets sealed and opened with an engine's keys
pki.py            throw-away CAs, certificates and CRLs
udp_stream.py     a UDP stream through a tunnel
lab.py            `gateway lab ...` as a script runs it
"""
