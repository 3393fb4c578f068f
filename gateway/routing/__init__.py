"""Route-based tunnels: XFRM interfaces, routes on them, their MTU, and updown hooks.

Policy-based tunnels (everything before this package) steer traffic into a Child SA by
its traffic selectors. Route-based tunnels give the Child SA an interface instead: its
SAs and policies carry an `if_id`, an XFRM interface with the same `if_id` is the
tunnel's door, and the routing table (static routes installed here, or a routing daemon
such as FRR) decides what goes through it. docs/routing.md explains both set-ups.

| module | job |
| --- | --- |
| `rtnl.py` | one NETLINK_ROUTE socket (the channel logic of gateway.xfrm.channel) |
| `interfaces.py` | XFRM interfaces: create, adopt, configure, read back, remove |
| `routes.py` | routes in a table with a metric (IPv4/IPv6), and the path to a peer |
| `mtu.py` | the interface MTU from the path MTU and the negotiated ESP overhead |
| `hooks.py` | updown programs run on Child SA up/down/rekey (asyncio, ordered per Child) |
"""
