"""The lab: two gateways, a WAN with an optional NAT router, and a host behind each.

    west ── gw-west ══ wan (router, optional NAT) ══ gw-east ── east
   10.1.0.10  10.1.0.1  198.51.100.2 | 203.0.113.2   10.2.0.1  10.2.0.10

Built from network namespaces on a kernel with ESP, or inside a virtme-ng VM otherwise
(`gateway lab up` decides and says so). See docs/lab.md.
"""
