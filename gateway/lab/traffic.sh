#!/bin/sh
# The lab's traffic between its hosts, the same in the namespace lab (gateway/lab/local.py)
# and the Vagrant lab (deploy/provision.sh):
#
#   traffic.sh server ADDR                 iperf3 server bound to ADDR (on east)
#   traffic.sh stream ADDR                 iperf3 at 2 Mbit/s to ADDR, reconnecting (west)
#   traffic.sh ping ADDR                   one ping a second to ADDR (west)
#   traffic.sh check ADDR [SECONDS] [SRC]  three pings to ADDR must be answered; retried
#                                          for up to SECONDS (default 60), from SRC if given
#
# server, stream and ping run in the foreground until stopped (a process of the lab, or a
# systemd unit on a Vagrant VM). The lab's router drops cleartext between the LANs, so an
# answered ping has crossed the tunnel.
set -eu

usage() {
    echo "usage: traffic.sh server|stream|ping|check ADDR [SECONDS] [SRC]" >&2
    exit 2
}

[ $# -ge 2 ] || usage
action=$1
addr=$2

case "$action" in
    server)
        exec iperf3 -s -B "$addr"
        ;;
    stream)
        # a new client when a run ends or its connection breaks (the tunnel rekeyed, the
        # server restarted): the console's rates keep moving
        while :; do
            iperf3 -c "$addr" -b 2M -t 86400 -i 0 -P 1 || true
            sleep 1
        done
        ;;
    ping)
        exec ping -i 1 "$addr"
        ;;
    check)
        seconds=${3:-60}
        src=${4:-}
        end=$(($(date +%s) + seconds))
        while :; do
            if [ -n "$src" ]; then
                ping -c 3 -i 0.3 -W 5 -I "$src" "$addr" && exit 0
            else
                ping -c 3 -i 0.3 -W 5 "$addr" && exit 0
            fi
            if [ "$(date +%s)" -ge "$end" ]; then
                echo "traffic.sh: $addr did not answer through the tunnel within ${seconds} s" >&2
                exit 1
            fi
            sleep 1
        done
        ;;
    *)
        usage
        ;;
esac
