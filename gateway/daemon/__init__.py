"""`gateway run`'s daemon: the one place where the IKE engine meets the kernel.

    core.py        Daemon: lifecycle, the engine pump and timer, the feature loop
    feature.py     the feature managers' hook interface and what they see of the daemon
    records.py     the SA table (IKE and Child SA records), totals, initiation attempts
    ike_sas.py     the IKE side of the SA table, from the engine's events
    report.py      report(): one log line and one control event per thing that happened
    engine.py      the Engine it drives, made from the configuration
    children.py    Child SAs into the data plane (install, rekey, move, remove)
    xdpslots.py    Child SAs' slots in the XDP/TC programs ([gateway.xdp])
    tally.py       the counters stats and /metrics show
    eventlog.py    what is reported of each engine event
    traps.py       trap policies and ACQUIREs (trap_table.py: their state machine)
    retries.py     keyingtries
    actions.py     start/close/dpd actions; initiate, terminate, rekey, redirect
    roaming.py     MOBIKE: address changes and `migrate`
    expiry.py      kernel lifetimes (XFRM EXPIRE)
    backend.py     list-conns, list-sas, stats, reload, the metrics snapshot

docs/daemon.md describes what it does; docs/architecture.md how a datagram travels.
"""

from gateway.daemon.core import Daemon

__all__ = ["Daemon"]
