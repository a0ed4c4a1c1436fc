"""A network of Linux network namespaces for cluster tests that cut links between nodes.

Each node gets its own namespace with one interface, `eth0`, the inside end of a veth pair whose
other end is enslaved to a bridge in the root namespace. The bridge has the subnet's first
address (10.77.N.1/24), so the test process reaches every node over it; the nodes get
10.77.N.2, .3, ... A partition is a set of iptables DROP rules inside the namespaces, in a chain
of their own (MERPATI_PART, hooked into INPUT and OUTPUT), so healing is one flush per namespace
and nothing else there is touched. Established TCP connections see the cut too: their packets are
dropped, as on a real network (no RST), so peers notice only through their own timeouts.

Names carry a subnet index N and this process's pid: namespaces `merpati-N-PID-NODE`, bridge
`mptbrN`, root-side veths `mptNvI`. A Network picks the first N whose bridge does not exist
(creating the bridge is the lock), so two test sessions on one machine do not collide; one whose
creator died is removed by the next setup (`sweep_stale`).

Requires root (CAP_NET_ADMIN) and the `ip` and `iptables` commands; `unavailable_reason()` tries
it all for real once and says why it cannot be done, for a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence

PREFIX = "merpati-"
CHAIN = "MERPATI_PART"
SUBNET = "10.77.{n}.0/24"
FIRST_INDEX = 0
LAST_INDEX = 250

_lock = threading.Lock()
_unavailable: list[str | None] = []


class NetnsError(RuntimeError):
    pass


def _run(*args: str, check: bool = True, timeout: float = 20.0) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(
            f"`{' '.join(args)}` failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _namespaces() -> list[str]:
    out = _run("ip", "netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _links() -> list[str]:
    out = _run("ip", "-o", "link", "show", check=False).stdout
    names = []
    for line in out.splitlines():
        m = re.match(r"\d+:\s+([^:@]+)", line)
        if m:
            names.append(m.group(1))
    return names


def sweep_stale() -> None:
    """Remove namespaces, bridges and FORWARD rules left by test processes that are gone."""
    dead_indexes = set()
    for ns in _namespaces():
        m = re.match(rf"{PREFIX}(\d+)-(\d+)-", ns)
        if m and not _pid_alive(int(m.group(2))):
            _run("ip", "netns", "del", ns, check=False)
            dead_indexes.add(int(m.group(1)))
    live_indexes = {
        int(m.group(1))
        for ns in _namespaces()
        if (m := re.match(rf"{PREFIX}(\d+)-(\d+)-", ns)) and _pid_alive(int(m.group(2)))
    }
    for link in _links():
        m = re.fullmatch(r"mptbr(\d+)", link)
        if m and int(m.group(1)) not in live_indexes:
            # A bridge without live namespaces: its creator died between bridge and namespaces.
            owner = _bridge_owner(int(m.group(1)))
            if owner is not None and not _pid_alive(owner):
                _remove_bridge(int(m.group(1)))


def _bridge_owner(index: int) -> int | None:
    try:
        return int(open(f"/run/merpati-netns-{index}.pid").read().strip())
    except (OSError, ValueError):
        return None


def _remove_bridge(index: int) -> None:
    bridge = f"mptbr{index}"
    for chain_rule in _forward_rules(bridge):
        _run("iptables", "-D", "FORWARD", *chain_rule, check=False)
    _run("ip", "link", "del", bridge, check=False)
    try:
        os.unlink(f"/run/merpati-netns-{index}.pid")
    except OSError:
        pass


def _forward_rules(bridge: str) -> list[list[str]]:
    return [["-i", bridge, "-o", bridge, "-j", "ACCEPT"]]


def unavailable_reason() -> str | None:
    """None when namespaces, a bridge, veths and iptables inside a namespace all work here; else
    why not (found by trying, once per process)."""
    with _lock:
        if _unavailable:
            return _unavailable[0]
        reason = _probe()
        _unavailable.append(reason)
        return reason


def _probe() -> str | None:
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"no `{tool}` command on this machine"
    if os.geteuid() != 0:
        return f"network namespaces need root (CAP_NET_ADMIN); the tests run as uid {os.geteuid()}"
    try:
        net = Network(["probe"])
        try:
            net.setup()
            net.isolate("probe")
            net.heal()
        finally:
            net.teardown()
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"cannot build a network of namespaces here: {e}"
    return None


class Network:
    """Namespaces for `names` (node ids) on one bridge; `setup()` builds, `teardown()` removes
    everything it made (also after a partial setup, and more than once)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.index: int | None = None
        self._made_ns: list[str] = []
        self._made_forward = False
        self.cut: set[frozenset[str]] = set()  # pairs that cannot talk now

    # -- naming -------------------------------------------------------------------------------

    def ns(self, name: str) -> str:
        return f"{PREFIX}{self.index}-{os.getpid()}-{name}"

    @property
    def bridge(self) -> str:
        return f"mptbr{self.index}"

    @property
    def gateway(self) -> str:
        """The root namespace's address on the bridge (the test process, the clients)."""
        return f"10.77.{self.index}.1"

    def address(self, name: str) -> str:
        return f"10.77.{self.index}.{self.names.index(name) + 2}"

    def wrap(self, name: str) -> list[str]:
        """Command prefix that runs a program inside `name`'s namespace (exec'd: same pid)."""
        return ["ip", "netns", "exec", self.ns(name)]

    def exec(self, name: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return _run(*self.wrap(name), *args, check=check)

    # -- building -----------------------------------------------------------------------------

    def setup(self) -> Network:
        sweep_stale()
        used = set()
        for line in _run("ip", "-o", "-4", "addr", "show", check=False).stdout.splitlines():
            m = re.search(r"inet 10\.77\.(\d+)\.", line)
            if m:
                used.add(int(m.group(1)))
        for index in range(FIRST_INDEX, LAST_INDEX):
            if index in used:
                continue
            # Creating the bridge is the lock: it fails if another session took this index.
            if _run("ip", "link", "add", f"mptbr{index}", "type", "bridge", check=False).returncode:
                continue
            self.index = index
            break
        else:
            raise NetnsError("no free subnet 10.77.N.0/24 for a test network")
        try:
            with open(f"/run/merpati-netns-{self.index}.pid", "w") as f:
                f.write(str(os.getpid()))
        except OSError:
            pass
        try:
            _run("ip", "addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            # Bridged frames may pass the root namespace's FORWARD chain (br_netfilter): let ours
            # through whatever its policy is.
            for rule in _forward_rules(self.bridge):
                _run("iptables", "-I", "FORWARD", *rule)
            self._made_forward = True
            for i, name in enumerate(self.names):
                ns = self.ns(name)
                _run("ip", "netns", "add", ns)
                self._made_ns.append(ns)
                veth = f"mpt{self.index}v{i}"
                _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                _run("ip", "link", "set", veth, "master", self.bridge, "up")
                self.exec(name, "ip", "addr", "add", f"{self.address(name)}/24", "dev", "eth0")
                self.exec(name, "ip", "link", "set", "eth0", "up")
                self.exec(name, "ip", "link", "set", "lo", "up")
                self.exec(name, "iptables", "-N", CHAIN)
                self.exec(name, "iptables", "-I", "INPUT", "-j", CHAIN)
                self.exec(name, "iptables", "-I", "OUTPUT", "-j", CHAIN)
        except BaseException:
            self.teardown()
            raise
        return self

    def teardown(self) -> list[str]:
        """Remove the namespaces (their veths and iptables rules go with them), the bridge and
        the FORWARD rules; returns what could not be removed (best effort, never raises)."""
        problems = []
        if self.index is None:
            return problems
        for ns in self._made_ns:
            # Whatever still runs inside (a node a failed test left) would keep the namespace,
            # and its veth, alive after `ip netns del`: kill it first.
            pids = _run("ip", "netns", "pids", ns, check=False).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            if pids:
                time.sleep(0.2)
            p = _run("ip", "netns", "del", ns, check=False)
            if p.returncode and ns in _namespaces():
                problems.append(f"netns {ns}: {p.stderr.strip()}")
        self._made_ns = []
        if self._made_forward:
            for rule in _forward_rules(self.bridge):
                _run("iptables", "-D", "FORWARD", *rule, check=False)
            self._made_forward = False
        for i in range(len(self.names)):
            veth = f"mpt{self.index}v{i}"
            if veth in _links():  # normally gone with its peer's namespace
                _run("ip", "link", "del", veth, check=False)
        p = _run("ip", "link", "del", self.bridge, check=False)
        if p.returncode and self.bridge in _links():
            problems.append(f"bridge {self.bridge}: {p.stderr.strip()}")
        try:
            os.unlink(f"/run/merpati-netns-{self.index}.pid")
        except OSError:
            pass
        self.cut.clear()
        return problems

    # -- faults -------------------------------------------------------------------------------

    def _drop(self, name: str, other_address: str) -> None:
        self.exec(name, "iptables", "-A", CHAIN, "-s", other_address, "-j", "DROP")
        self.exec(name, "iptables", "-A", CHAIN, "-d", other_address, "-j", "DROP")

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Cut every link between nodes of different groups (nodes in no group are cut from
        all the others). The test process still reaches every node."""
        sets = [set(g) for g in groups]
        for g in sets:
            unknown = g - set(self.names)
            if unknown:
                raise ValueError(f"unknown nodes {sorted(unknown)}")

        def group(n: str) -> int:
            for i, g in enumerate(sets):
                if n in g:
                    return i
            return -1 - self.names.index(n)  # a group of its own

        for a in self.names:
            for b in self.names:
                if a != b and group(a) != group(b):
                    self._drop(a, self.address(b))
                    self.cut.add(frozenset((a, b)))

    def cut_links(self, pairs: Iterable[tuple[str, str]]) -> None:
        """Cut only these links (both ways): e.g. a bridge partition where one node sees both
        sides."""
        for a, b in pairs:
            self._drop(a, self.address(b))
            self._drop(b, self.address(a))
            self.cut.add(frozenset((a, b)))

    def isolate(self, name: str, clients: bool = False) -> None:
        """Cut `name` from every other node; with `clients`, from the test process too."""
        self.partition([{name}, set(self.names) - {name}])
        if clients:
            self._drop(name, self.gateway)

    def heal(self) -> None:
        for name in self.names:
            self.exec(name, "iptables", "-F", CHAIN)
        self.cut.clear()

    def rules(self, name: str) -> str:
        return self.exec(name, "iptables", "-S", CHAIN, check=False).stdout
