#!/usr/bin/env bash
# Idempotent set-up of everything the gateway, its tests and its lab need on a Debian 12
# machine: Debian packages, the kernel-header link bcc needs, the venv, and the VM kernel.
# Safe to run again: each step checks first and does nothing when already done.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"
PKG_LIST="$ROOT/deploy/debian-packages.txt"

log() { printf 'setup: %s\n' "$*" >&2; }

need_root() {
    if [ "$(id -u)" -ne 0 ]; then
        log "this step needs root (apt-get, /lib/modules): run as root or with sudo"
        exit 1
    fi
}

install_debian_packages() {
    local wanted missing=()
    mapfile -t wanted < <(grep -Ev '^\s*(#|$)' "$PKG_LIST")
    for p in "${wanted[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return
    fi
    need_root
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends "${missing[@]}"
}

# bcc compiles at load time against /lib/modules/$(uname -r)/build. A custom host kernel
# ships no headers; Debian's linux-headers-amd64 serve, since our programs use only UAPI.
link_kernel_headers() {
    local kver mod hdr common
    kver=$(uname -r)
    mod="/lib/modules/$kver"
    if [ -e "$mod/build/include/uapi/linux/bpf.h" ] || [ -e "$mod/build/include/linux/bpf.h" ]; then
        return
    fi
    hdr=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-amd64' | sort -V | tail -n 1)
    common=$(find /usr/src -maxdepth 1 -name 'linux-headers-*-common' | sort -V | tail -n 1)
    if [ -z "$hdr" ] || [ -z "$common" ]; then
        log "no kernel headers under /usr/src (linux-headers-amd64 missing?)"
        exit 1
    fi
    need_root
    log "linking $mod/build -> $hdr (bcc needs headers; UAPI is enough for our programs)"
    mkdir -p "$mod"
    ln -sfn "$hdr" "$mod/build"
    ln -sfn "$common" "$mod/source"
}

make_venv() {
    local stamp="$VENV/.installed" want
    want=$(sha256sum "$ROOT/pyproject.toml" | cut -d' ' -f1)
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating venv $VENV (Debian python3, the interpreter python3-bpfcc is built for)"
        /usr/bin/python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
        log "installing the project and its test dependencies into the venv"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -e "${ROOT}[test]"
        echo "$want" > "$stamp"
    fi
    # bcc: reach Debian's package from the venv through one symlink (not the whole
    # dist-packages, whose other modules would shadow the venv's pinned versions).
    local site
    site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
        ln -s /usr/lib/python3/dist-packages/bcc "$site/bcc"
    fi
}

# Debian enables freeradius.service at install. The tests start their own instances (own
# config dir, own namespace); a system server on the host's port 1812 is not ours to run.
# Only where systemd is the running init: elsewhere (containers, policy-rc.d) it never started.
quiet_freeradius_service() {
    if [ ! -d /run/systemd/system ] || ! command -v systemctl >/dev/null; then
        return
    fi
    if ! systemctl list-unit-files freeradius.service >/dev/null 2>&1; then
        return
    fi
    if systemctl is-enabled --quiet freeradius.service 2>/dev/null \
        || systemctl is-active --quiet freeradius.service 2>/dev/null; then
        need_root
        log "stopping and disabling freeradius.service (the tests run their own FreeRADIUS)"
        systemctl disable --now freeradius.service
    fi
}

# netdevsim: a simulated NIC whose devices accept ESP crypto offload and count offloaded
# packets in debugfs. Debian's kernel does not ship it, so it is built out of tree from
# linux-source-6.1 against the headers of the VM kernel (the newest /boot/vmlinuz-*-amd64,
# the one gateway/vm.py boots), into .work/netdevsim/<release>/ of the checkout. The
# kernel test layer loads it inside the VM (tests/support/netdevsim.py).
build_netdevsim() {
    local image rel hdr tarball out ko tmp
    image=$(find /boot -maxdepth 1 -name 'vmlinuz-*-amd64' | sort -V | tail -n 1)
    [ -n "$image" ] || return 0  # check_vm_kernel reports it
    rel=${image#/boot/vmlinuz-}
    hdr="/usr/src/linux-headers-$rel"
    tarball=$(find /usr/src -maxdepth 1 -name 'linux-source-*.tar.xz' | sort -V | tail -n 1)
    out="$ROOT/.work/netdevsim/$rel"
    ko="$out/netdevsim.ko"
    if [ -f "$ko" ] && [ "$ko" -nt "$tarball" ] && [ "$ko" -nt "$hdr/Module.symvers" ]; then
        return
    fi
    if [ ! -d "$hdr" ] || [ -z "$tarball" ]; then
        log "cannot build netdevsim: need $hdr and /usr/src/linux-source-*.tar.xz"
        exit 1
    fi
    log "building netdevsim for $rel from $(basename "$tarball")"
    mkdir -p "$ROOT/.work"
    tmp=$(mktemp -d "$ROOT/.work/netdevsim-build.XXXXXX")
    # shellcheck disable=SC2064 # expand now: the trap must remove this build's folder
    trap "rm -rf '$tmp'" RETURN
    tar -xJf "$tarball" -C "$tmp" --strip-components=1 --wildcards '*/drivers/net/netdevsim/*'
    make -s -C "$hdr" M="$tmp/drivers/net/netdevsim" CONFIG_NETDEVSIM=m modules >&2
    mkdir -p "$out"
    cp "$tmp/drivers/net/netdevsim/netdevsim.ko" "$ko.tmp"
    mv "$ko.tmp" "$ko"
}

check_vm_kernel() {
    if ! ls /boot/vmlinuz-*-amd64 >/dev/null 2>&1; then
        log "no Debian kernel in /boot (linux-image-amd64 missing?)"
        exit 1
    fi
}

install_debian_packages
quiet_freeradius_service
link_kernel_headers
make_venv
check_vm_kernel
build_netdevsim
log "ready: $VENV"
