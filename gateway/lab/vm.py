"""Run commands inside a virtme-ng VM booted with Debian's kernel.

The host kernel of our development/CI machines has no ESP, so everything that needs
kernel ESP (the kernel test layer, the lab) runs in a throw-away VM: virtme-ng boots
/boot/vmlinuz-*-amd64 under qemu with the host's root file system read-only and one
read-write folder shared back to the host. KVM guests hang on these machines, so the VM
runs under TCG (software emulation, ~30x slower) unless GATEWAY_VM_KVM=1.
"""

from __future__ import annotations

import glob
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from gateway.errors import GatewayError


class VmError(GatewayError):
    pass


@dataclass(frozen=True, slots=True)
class VmResult:
    returncode: int
    console: str
    timed_out: bool = False


def _version_key(path: str) -> list[int]:
    return [int(n) for n in re.findall(r"\d+", os.path.basename(path))]


def vm_kernel() -> Path:
    """The kernel image to boot: $GATEWAY_VM_KERNEL or the newest Debian amd64 kernel."""
    override = os.environ.get("GATEWAY_VM_KERNEL")
    if override:
        return Path(override)
    images = sorted(glob.glob("/boot/vmlinuz-*-amd64"), key=_version_key)
    if not images:
        raise VmError(
            "no Debian kernel in /boot for the VM: install linux-image-amd64 "
            "(scripts/setup.sh does)"
        )
    return Path(images[-1])


def vng_binary() -> str:
    beside = Path(sys.executable).parent / "vng"
    if beside.exists():
        return str(beside)
    found = shutil.which("vng")
    if not found:
        raise VmError("virtme-ng (vng) not found: run scripts/setup.sh")
    return found


def run_in_vm(
    script: str,
    *,
    rwdirs: list[Path],
    memory: str = "2G",
    cpus: int = 2,
    timeout: float = 2400,
) -> VmResult:
    """Boot a VM, run `script` (shell) as root inside it, return its exit status.

    The exit status is carried back through the first rwdir (a file written by the
    guest), so a guest that dies early shows up as a failure, never as a pass.
    """
    if not rwdirs:
        raise VmError("run_in_vm needs at least one read-write folder")
    status_file = rwdirs[0] / ".vm-exit-status"
    status_file.unlink(missing_ok=True)
    wrapped = f"{script}\necho $? > {shlex.quote(str(status_file))}\n"
    guest_script = rwdirs[0] / ".vm-script.sh"
    guest_script.write_text("#!/bin/sh\n" + wrapped)
    guest_script.chmod(0o755)
    argv = [vng_binary()]
    if os.environ.get("GATEWAY_VM_KVM") != "1":
        argv.append("--disable-kvm")
    argv += ["--run", str(vm_kernel()), "--user", "root", "--memory", memory]
    argv += ["--cpus", str(cpus)]
    for d in rwdirs:
        argv += ["--rwdir", str(d)]
    argv += ["--exec", str(guest_script)]
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '/usr/bin:/bin')}"
    # vng starts virtme-run, which starts qemu: run them in a session of their own so a
    # timeout or an interrupted caller can end the whole group, not just vng.
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
        start_new_session=True,
    )
    try:
        console, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        console, _ = proc.communicate()
        return VmResult(returncode=124, console=console or "", timed_out=True)
    except BaseException:
        _kill_group(proc)
        raise
    try:
        rc = int(status_file.read_text().strip())
    except (OSError, ValueError):
        rc = proc.returncode if proc.returncode != 0 else 125
    return VmResult(returncode=rc, console=console)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
