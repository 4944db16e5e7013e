"""Hosts for tests as Linux network namespaces of this machine (root only): each host its own
namespace with its address on a veth whose other end is a port of a bridge of this machine,
and a default route through the bridge (where Dask's get_ip() finds the host's address). The
file system is the machine's: it stands for a shared one. Used by tests/test_slurm.py (SLURM
nodes) and tests/test_multihost.py (a Dask cluster over several hosts)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
import pytest


class Namespaces:
    """Hosts ``names`` on 10.<octet>.x.0/24: the bridge ``<prefix>br<x>`` has .1 (this machine),
    host i has .(i + 2) in the namespace ``<prefix><x>-<name>``, its veth pair is
    ``<prefix><x>v<i>`` (on the bridge) and ``<prefix><x>v<i>p`` (in the namespace). x is the
    first subnet no address, route or namespace here uses: runs side by side take different
    ones (creating the bridge claims it)."""

    def __init__(self, names: Sequence[str], prefix: str, octet: int, tools: Sequence[str] = ("ip", "nsenter")):
        self.names = list(names)
        self.prefix, self.octet, self.tools = prefix, octet, tuple(tools)
        self.subnet = 0  # the x of the subnet once its bridge exists
        self.namespaces: dict[str, str] = {}  # /proc/PID/ns/net of a host's processes -> the host

    @property
    def bridge(self) -> str:
        return f"{self.prefix}br{self.subnet}"

    @property
    def gateway(self) -> str:
        return f"10.{self.octet}.{self.subnet}.1"

    def address(self, name: str) -> str:
        return f"10.{self.octet}.{self.subnet}.{self.names.index(name) + 2}"

    def netns(self, name: str) -> str:
        return f"{self.prefix}{self.subnet}-{name}"

    def veth(self, name: str) -> str:
        return f"{self.prefix}{self.subnet}v{self.names.index(name)}"

    def create(self) -> None:
        """The bridge, then each host's namespace and veth pair; a skip saying why when the
        machine does not allow them."""
        if os.geteuid() != 0:
            pytest.skip("network namespaces, veths and a bridge need root")
        missing = [c for c in self.tools if not shutil.which(c)]
        if missing:
            pytest.skip(f"the hosts' namespaces need {', '.join(missing)}")
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        used += subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
        for x in range(1, 255):
            if f"10.{self.octet}.{x}." in used or any(Path("/run/netns").glob(f"{self.prefix}{x}-*")):
                continue
            done = subprocess.run(["ip", "link", "add", f"{self.prefix}br{x}", "type", "bridge"], capture_output=True, text=True)
            if "File exists" not in done.stderr:
                break
        else:
            pytest.skip(f"no free subnet 10.{self.octet}.x.0/24 for the hosts' bridge")
        if done.returncode != 0:
            pytest.skip(f"cannot create a bridge (ip link add type bridge): {done.stderr.strip()}")
        self.subnet = x
        commands = [["ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge], ["ip", "link", "set", self.bridge, "up"]]
        for name in self.names:
            ns, veth = self.netns(name), self.veth(name)
            commands += [
                ["ip", "netns", "add", ns],
                ["ip", "link", "add", veth, "type", "veth", "peer", "name", f"{veth}p"],
                ["ip", "link", "set", f"{veth}p", "netns", ns],
                ["ip", "link", "set", veth, "master", self.bridge, "up"],
                ["ip", "-n", ns, "addr", "add", f"{self.address(name)}/24", "dev", f"{veth}p"],
                ["ip", "-n", ns, "link", "set", f"{veth}p", "up"],
                ["ip", "-n", ns, "link", "set", "lo", "up"],
                ["ip", "-n", ns, "route", "add", "default", "via", self.gateway],
            ]
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                self.remove()
                pytest.skip(f"cannot create the hosts' namespaces: {' '.join(command)}: {done.stderr.strip()}")
        self.namespaces = {f"net:[{os.stat(f'/run/netns/{self.netns(n)}').st_ino}]": n for n in self.names}

    def command(self, name: str, *command: object, hostname: bool = False) -> list[str]:
        """``command`` on host ``name``; with ``hostname``, in a UTS namespace of its own named
        after the host. nsenter joins the namespace and execs (the PID started is the command's
        own) and remounts nothing: `ip netns exec` remounts /sys, hiding /sys/fs/cgroup from
        slurmd ("Unable to initialize cgroup plugin")."""
        enter = ["nsenter", f"--net=/run/netns/{self.netns(name)}", "--"]
        if hostname:
            enter += ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"', name]
        return [*enter, *map(str, command)]

    def link(self, name: str, state: str) -> None:
        """Host ``name``'s cable at the bridge's end: down, the bridge drops every frame to and
        from it (a pulled cable: no FIN, no RST)."""
        subprocess.run(["ip", "link", "set", self.veth(name), state], check=True)

    def node_of(self, pid: int) -> str | None:
        """The host a process runs on; None for this machine."""
        try:
            return self.namespaces.get(os.readlink(f"/proc/{pid}/ns/net"))
        except OSError:
            return None

    def pids(self, name: str) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns(name)], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]

    def remove(self) -> None:
        """Kill by PID whatever still runs in the namespaces (a namespace with a process in it
        outlives `ip netns del`, unnamed, with its veth), delete them, any veth left (the kernel
        deletes a namespace's devices a moment after the namespace) and the bridge."""
        if not self.subnet:
            return
        for name in self.names:
            for pid in self.pids(name):
                with contextlib.suppress(psutil.Error):
                    psutil.Process(pid).kill()
            deadline = time.monotonic() + 10
            while self.pids(name) and time.monotonic() < deadline:
                time.sleep(0.1)
            subprocess.run(["ip", "netns", "del", self.netns(name)], capture_output=True)
            subprocess.run(["ip", "link", "del", self.veth(name)], capture_output=True)
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)

    def left(self) -> list[str]:
        """Whatever of these namespaces and links is still there."""
        links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
        netns = [p.name for p in Path("/run/netns").glob(f"{self.prefix}{self.subnet}-*")]
        return netns + re.findall(rf"^\d+: ({self.prefix}br{self.subnet}|{self.prefix}{self.subnet}v\d+p?)[@:]", links, re.M)
