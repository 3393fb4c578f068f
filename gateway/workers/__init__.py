"""`[gateway] workers = N`: N IKE worker processes behind one port (docs/daemon.md).

    supervisor.py  the `gateway run` process: sockets, control API, metrics, restarts
    worker.py      one worker: the ordinary daemon with its share, served to the supervisor
    zygote.py      a pre-imported process that forks workers on request
    partition.py   the shares: IKE SPIs, ESP SPIs, reqids, connections
    sockets.py     the SO_REUSEPORT groups and their steering program
    xdpshare.py    one set of XDP/TC programs for all workers (`[gateway.xdp]`)
    merge.py       gateway-wide answers from the workers' answers

Nothing here imports the supervisor back: the supervisor and the worker side meet only
in the zygote's request and the control protocol.
"""
