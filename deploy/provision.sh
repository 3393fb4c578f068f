#!/usr/bin/env bash
# Provision one node of the Vagrant lab (Vagrantfile). The topology, addresses, gateway
# configs, router rules, traffic and checks are the namespace lab's own (gateway/lab/), so
# the two labs cannot drift:
#
#   west ── gw-west ══ router ══ gw-east ── east
#   10.1.0.10  10.1.0.1 / 198.51.100.2 | 203.0.113.2 / 10.2.0.1  10.2.0.10
#
# Usage: provision.sh ROLE [--nat] [--no-xdp] [--no-install]
#   ROLE          west | gw-west | router | gw-east | east
#   --nat         (router) masquerade gw-west behind the router: IKE moves to UDP 4500
#   --no-xdp      (gateways) run the daemon without its XDP/TC programs
#   --no-install  install nothing: the Debian packages and /opt/gateway/venv must be there
#                 already (the kernel test layer provisions namespaces this way)
#
# Vagrant provisions the nodes in the Vagrantfile's order: router, gw-east, east, gw-west,
# west. Each role ends with the namespace lab's checks for its part: gw-east answers and
# Prometheus scrapes it; gw-west brings the tunnel up, pings cross it, the kernel counts
# the ESP packets, Prometheus scrapes it; west pings east through the tunnel, then starts
# the iperf3 stream and the ping that keep the console's rates moving. A failed check
# fails the provisioning with the step and the service's log.
#
# Where systemd runs (a Vagrant VM) the services are systemd units; where it does not (the
# kernel test layer's namespaces) they are background processes of this node logging to
# /var/log/lab/NAME.log.
set -euo pipefail

usage() {
    echo "usage: provision.sh west|gw-west|router|gw-east|east [--nat] [--no-xdp] [--no-install]" >&2
    exit 2
}

[ $# -ge 1 ] || usage
ROLE=$1
shift
NAT=""
XDP=1
INSTALL=1
for arg in "$@"; do
    case "$arg" in
        --nat) NAT=1 ;;
        --no-xdp) XDP="" ;;
        --no-install) INSTALL="" ;;
        *) usage ;;
    esac
done

SRC=${GATEWAY_SRC:-/vagrant}
LAB="$SRC/gateway/lab"
VENV=/opt/gateway/venv
TRAFFIC=/usr/local/lib/gateway-lab/traffic.sh
EAST_HOST=10.2.0.10
export DEBIAN_FRONTEND=noninteractive

log() {
    printf 'provision %s: %s\n' "$ROLE" "$*"
}

fail() {
    log "FAILED: $*" >&2
    exit 1
}

# Install the Debian packages that are missing (a re-provision installs nothing); with
# --no-install a missing package is an error instead.
packages() {
    local p missing=()
    for p in "$@"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    [ -n "$INSTALL" ] || fail "--no-install, but these Debian packages are missing: ${missing[*]}"
    log "installing ${missing[*]}"
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# The interface that holds ADDRESS (Vagrant names NICs by provider: eth1, enp0s8, ...).
iface_of() {
    ip -o -4 addr show | awk -v a="$1" '{split($4, p, "/"); if (p[1] == a) print $2}'
}

route_via() {  # route_via PREFIX GATEWAY
    ip route replace "$1" via "$2"
    # keep it across reboots
    printf '#!/bin/sh\nip route replace %s via %s\n' "$1" "$2" \
        > "/etc/network/if-up.d/lab-route-${1%%/*}"
    chmod 755 "/etc/network/if-up.d/lab-route-${1%%/*}"
}

forwarding() {
    echo 'net.ipv4.ip_forward = 1' > /etc/sysctl.d/90-lab-forwarding.conf
    sysctl -q -p /etc/sysctl.d/90-lab-forwarding.conf
}

have_systemd() {
    [ -d /run/systemd/system ]
}

background() {  # background NAME COMMAND...: a service of this node without systemd
    local name=$1
    shift
    mkdir -p /var/log/lab /run/lab
    if [ -f "/run/lab/$name.pid" ]; then
        kill "$(cat "/run/lab/$name.pid")" 2>/dev/null || true
    fi
    setsid "$@" >> "/var/log/lab/$name.log" 2>&1 < /dev/null &
    echo $! > "/run/lab/$name.pid"
}

service_logs() {  # service_logs NAME: its last lines, shown when a check fails
    log "--- $1 log (last 40 lines) ---"
    if have_systemd; then
        journalctl -u "$1" -n 40 --no-pager || true
    else
        tail -n 40 "/var/log/lab/$1.log" 2>/dev/null || true
    fi
}

# A service of the lab's own (the traffic): a systemd unit, or a background process.
lab_service() {  # lab_service NAME COMMAND...
    local name="lab-$1"
    shift
    if have_systemd; then
        cat > "/etc/systemd/system/$name.service" <<UNIT
[Unit]
Description=Vagrant lab: $name ($*)
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$*
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
        systemctl daemon-reload
        systemctl enable -q "$name.service"
        systemctl restart "$name.service"
    else
        background "$name" "$@"
    fi
}

install_traffic() {
    install -D -m 0755 "$LAB/traffic.sh" "$TRAFFIC"
}

install_gateway() {
    if [ -z "$INSTALL" ]; then
        [ -x "$VENV/bin/gateway" ] || fail "--no-install, but there is no $VENV/bin/gateway"
        return
    fi
    install -d -m 0755 /opt/gateway
    rm -rf /opt/gateway/src && cp -a "$SRC" /opt/gateway/src
    if [ ! -x "$VENV/bin/python" ]; then
        /usr/bin/python3 -m venv "$VENV"
    fi
    "$VENV/bin/pip" install -q /opt/gateway/src
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
}

start_gateway() {
    if have_systemd; then
        install -m 0644 "$SRC/deploy/gateway.service" /etc/systemd/system/gateway.service
        systemctl daemon-reload
        systemctl enable -q gateway.service
        systemctl restart gateway.service
        return
    fi
    # Without systemd: the unit's own command lines (deploy/gateway.service)
    local pre start
    pre=$(sed -n 's/^ExecStartPre=//p' "$SRC/deploy/gateway.service")
    start=$(sed -n 's/^ExecStart=//p' "$SRC/deploy/gateway.service")
    install -d -m 0700 /run/gateway
    # shellcheck disable=SC2086 # split into words as systemd does
    $pre
    # shellcheck disable=SC2086
    background gateway $start
}

start_prometheus() {
    # Prometheus on the gateway scrapes the gateway's exporter (localhost only) and
    # evaluates the project's alerting rules (deploy/prometheus/ipsec-alerts.yml).
    install -m 0644 "$SRC/deploy/prometheus/ipsec-alerts.yml" /etc/prometheus/ipsec-alerts.yml
    cat > /etc/prometheus/prometheus.yml <<PROM
global:
  scrape_interval: 5s
  evaluation_interval: 5s
rule_files:
  - /etc/prometheus/ipsec-alerts.yml
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["127.0.0.1:9810"]
PROM
    if have_systemd; then
        systemctl enable -q prometheus
        systemctl restart prometheus
    else
        background prometheus /usr/bin/prometheus \
            --config.file=/etc/prometheus/prometheus.yml \
            --storage.tsdb.path=/var/lib/prometheus/metrics2/
    fi
}

provision_gateway() {
    local node=$1 wan_addr=$2 lan_addr=$3 router=$4 peer_wan_net=$5 peer_lan_net=$6
    packages python3-venv python3-bpfcc clang "linux-headers-$(uname -r)" iproute2 \
        iputils-ping nftables iperf3 ethtool prometheus
    forwarding
    # The peer's WAN and LAN via the router, as the namespace lab's default route: were
    # the tunnel down, cleartext would meet the router's drop rule, not the VM's NAT NIC.
    route_via "$peer_wan_net" "$router"
    route_via "$peer_lan_net" "$router"
    install_gateway
    install_traffic

    local wan lan
    wan=$(iface_of "$wan_addr")
    lan=$(iface_of "$lan_addr")
    if [ -z "$wan" ] || [ -z "$lan" ]; then
        fail "no interface holds $wan_addr or $lan_addr"
    fi
    install -d -m 0700 /etc/gateway
    # The lab's embedded config, with XDP on this VM's own WAN/LAN interface names.
    awk -v wan="$wan" -v lan="$lan" -v xdp="$XDP" '
        /^\[connections\./ && !done && xdp {
            print "[gateway.xdp]"; print "wan_interface = \"" wan "\"";
            print "lan_interface = \"" lan "\""; print "mss_clamp = true"; print ""; done = 1
        }
        { print }' "$LAB/configs/$node.toml" > /etc/gateway/gateway.toml
    chmod 0600 /etc/gateway/gateway.toml
    if [ -n "$XDP" ]; then
        log "starting the gateway, XDP on $wan (WAN) and $lan (LAN)"
    else
        log "starting the gateway without XDP"
    fi
    start_gateway
    start_prometheus
    if ! "$VENV/bin/gateway" lab check "$node"; then
        service_logs gateway
        service_logs prometheus
        fail "the checks of $node did not pass"
    fi
}

case "$ROLE" in
    router)
        packages nftables iproute2
        forwarding
        nft -f "$LAB/nft/router-filter.nft"
        if [ -n "$NAT" ]; then
            sed "s/WAN_EAST_IF/$(iface_of 203.0.113.1)/" "$LAB/nft/router-nat.nft" | nft -f -
        fi
        nft list ruleset > /etc/nftables.conf
        if have_systemd; then
            systemctl enable -q nftables
        fi
        nft list table ip lab_filter > /dev/null || fail "the router's filter rules are not loaded"
        log "routing between the WANs${NAT:+, gw-west masqueraded}; cleartext to the LANs dropped"
        ;;
    gw-east)
        provision_gateway gw-east 203.0.113.2 10.2.0.1 203.0.113.1 198.51.100.0/24 10.1.0.0/24
        ;;
    east)
        packages iperf3 iproute2 iputils-ping
        route_via 10.1.0.0/24 10.2.0.1
        install_traffic
        lab_service traffic-server "$TRAFFIC" server "$EAST_HOST"
        for _ in $(seq 60); do
            if ss -ltnH | grep -q "$EAST_HOST:5201"; then
                log "iperf3 server listening on $EAST_HOST:5201"
                exit 0
            fi
            sleep 1
        done
        service_logs lab-traffic-server
        fail "the iperf3 server did not start listening"
        ;;
    gw-west)
        provision_gateway gw-west 198.51.100.2 10.1.0.1 198.51.100.1 203.0.113.0/24 10.2.0.0/24
        ;;
    west)
        packages iperf3 iproute2 iputils-ping
        route_via 10.2.0.0/24 10.1.0.1
        install_traffic
        # the namespace lab's check first: pings to east answered through the tunnel
        "$TRAFFIC" check "$EAST_HOST" 300 || fail "no ping reached east through the tunnel"
        lab_service traffic-stream "$TRAFFIC" stream "$EAST_HOST"
        lab_service traffic-ping "$TRAFFIC" ping "$EAST_HOST"
        log "traffic to east running: iperf3 at 2 Mbit/s and a ping a second"
        ;;
    *)
        usage
        ;;
esac
