"""The lab: two gateways, a WAN with an optional NAT router, and a host behind each.

    west ── gw-west ══ wan (router, optional NAT) ══ gw-east ── east
   10.1.0.10  10.1.0.1  198.51.100.2 | 203.0.113.2   10.2.0.1  10.2.0.10

Built from network namespaces on a kernel with ESP, or inside a virtme-ng VM otherwise
(`gateway lab up` decides and says so). See docs/lab.md.

    cli.py         `gateway lab up|status|tui|down`
    topology.py    the namespaces, links and addresses
    local.py       the lab on this kernel: gateways, peers, traffic, state
    vmmode.py      the lab inside a VM (host side and guest agent)
    vm.py          the virtme-ng VM runner (the lab and the kernel test layer)
    strongswan.py  charon as a peer in a namespace (the lab's --peer strongswan, tests)

gateway/netns.py and gateway/probe.py are not the lab's alone: `gateway doctor` probes
kernel ESP in a throw-away namespace with them.
"""
