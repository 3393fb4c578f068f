#!/usr/bin/env bash
# Provision one node of the Vagrant lab (Vagrantfile). The topology, addresses, gateway
# configs and router rules are the namespace lab's own files (gateway/lab/), so the two
# labs cannot drift:
#
#   west ── gw-west ══ router ══ gw-east ── east
#   10.1.0.10  10.1.0.1 / 198.51.100.2 | 203.0.113.2 / 10.2.0.1  10.2.0.10
#
# Usage: provision.sh ROLE [--nat]   ROLE: west | gw-west | router | gw-east | east
set -euo pipefail

ROLE=${1:?usage: provision.sh ROLE [--nat]}
NAT=${2:-}
SRC=${GATEWAY_SRC:-/vagrant}
LAB="$SRC/gateway/lab"
export DEBIAN_FRONTEND=noninteractive

# The interface that holds ADDRESS (Vagrant names NICs by provider: eth1, enp0s8, ...).
iface_of() {
    ip -o -4 addr show | awk -v a="$1" '{split($4, p, "/"); if (p[1] == a) print $2}'
}

apt_install() {
    apt-get update -q
    apt-get install -y -q --no-install-recommends "$@"
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

provision_gateway() {
    local node=$1 wan_addr=$2 lan_addr=$3 peer_wan_net=$4 router=$5
    apt_install python3-venv python3-bpfcc clang "linux-headers-$(uname -r)" iproute2 \
        nftables iperf3 ethtool prometheus
    forwarding
    route_via "$peer_wan_net" "$router"
    install -d -m 0755 /opt/gateway
    rm -rf /opt/gateway/src && cp -a "$SRC" /opt/gateway/src
    if [ ! -x /opt/gateway/venv/bin/python ]; then
        /usr/bin/python3 -m venv /opt/gateway/venv
    fi
    /opt/gateway/venv/bin/pip install -q /opt/gateway/src
    site=$(/opt/gateway/venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

    local wan lan
    wan=$(iface_of "$wan_addr")
    lan=$(iface_of "$lan_addr")
    install -d -m 0700 /etc/gateway
    # The lab's embedded config, with XDP on this VM's own WAN/LAN interface names.
    awk -v wan="$wan" -v lan="$lan" '
        /^\[connections\./ && !done {
            print "[gateway.xdp]"; print "wan_interface = \"" wan "\"";
            print "lan_interface = \"" lan "\""; print "mss_clamp = true"; print ""; done = 1
        }
        { print }' "$LAB/configs/$node.toml" > /etc/gateway/gateway.toml
    chmod 0600 /etc/gateway/gateway.toml
    install -m 0644 "$SRC/deploy/gateway.service" /etc/systemd/system/gateway.service

    # Prometheus on the gateway scrapes the gateway's exporter (localhost only).
    cat > /etc/prometheus/prometheus.yml <<PROM
global:
  scrape_interval: 5s
scrape_configs:
  - job_name: gateway
    static_configs:
      - targets: ["127.0.0.1:9810"]
PROM
    systemctl daemon-reload
    systemctl enable --now gateway.service
    systemctl restart prometheus
}

case "$ROLE" in
    west)
        apt_install iperf3 iproute2
        route_via 10.2.0.0/24 10.1.0.1
        ;;
    east)
        apt_install iperf3 iproute2
        route_via 10.1.0.0/24 10.2.0.1
        systemctl enable --now iperf3 2>/dev/null || (iperf3 -s -D)
        ;;
    router)
        apt_install nftables iproute2
        forwarding
        nft -f "$LAB/nft/router-filter.nft"
        if [ "$NAT" = "--nat" ]; then
            sed "s/WAN_EAST_IF/$(iface_of 203.0.113.1)/" "$LAB/nft/router-nat.nft" | nft -f -
        fi
        nft list ruleset > /etc/nftables.conf
        systemctl enable nftables
        ;;
    gw-west)
        provision_gateway gw-west 198.51.100.2 10.1.0.1 203.0.113.0/24 198.51.100.1
        ;;
    gw-east)
        provision_gateway gw-east 203.0.113.2 10.2.0.1 198.51.100.0/24 203.0.113.1
        ;;
    *)
        echo "provision.sh: unknown role '$ROLE'" >&2
        exit 2
        ;;
esac
