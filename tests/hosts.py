"""Hosts for the processes of a split deployment. Where the machine allows (root, `ip netns`), each gets its
own network namespace, with its own loopback and one address on a bridge in the test's namespace, so the
processes reach each other only over the addresses they are given, as on separate machines; elsewhere they
all share the test's loopback."""

from __future__ import annotations

import os
import socket
import subprocess
import threading


class Hosts:
    def __init__(self, names: list[str]):
        self.names = names
        self.isolated = False
        self.peer_address = "127.0.0.1"  # where the test's own peers (dcmtk) listen and connect from
        self._tag = f"{os.getpid() % 100000}"
        self._subnet = f"10.213.{os.getpid() % 250}"

    def namespace(self, name: str) -> str:
        return f"cqa{self._tag}-{self.names.index(name)}"

    def address(self, name: str) -> str:
        return f"{self._subnet}.{10 + self.names.index(name)}" if self.isolated else "127.0.0.1"

    def prefix(self, name: str) -> list[str]:
        """What a command run on host ``name`` is prefixed with."""
        return ["ip", "netns", "exec", self.namespace(name)] if self.isolated else []

    def __enter__(self) -> "Hosts":
        if os.geteuid() == 0:
            try:
                self._make_namespaces()
                self._check_reachable()
                self.isolated, self.peer_address = True, f"{self._subnet}.1"
            except (subprocess.CalledProcessError, OSError, AssertionError):
                self._remove_namespaces()
        return self

    def __exit__(self, *_) -> None:
        if self.isolated:
            self._remove_namespaces()

    def _ip(self, *args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)

    def _make_namespaces(self) -> None:
        bridge = f"cqb{self._tag}"
        self._ip("link", "add", bridge, "type", "bridge")
        self._ip("addr", "add", f"{self._subnet}.1/24", "dev", bridge)
        self._ip("link", "set", bridge, "up")
        for index, name in enumerate(self.names):
            namespace, veth = self.namespace(name), f"cqv{self._tag}-{index}"
            self._ip("netns", "add", namespace)
            self._ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            self._ip("link", "set", veth, "master", bridge, "up")
            self._ip("-n", namespace, "addr", "add", f"{self._subnet}.{10 + index}/24", "dev", "eth0")
            self._ip("-n", namespace, "link", "set", "eth0", "up")
            self._ip("-n", namespace, "link", "set", "lo", "up")

    def _check_reachable(self) -> None:
        """A connection from the last host to the test's bridge address (a bridge that drops traffic, as some
        firewalls make it, leaves the hosts on loopback)."""
        with socket.socket() as listener:
            listener.bind((f"{self._subnet}.1", 0))
            listener.listen()
            accepted = threading.Thread(target=listener.accept, daemon=True)
            accepted.start()
            port = listener.getsockname()[1]
            subprocess.run(["ip", "netns", "exec", self.namespace(self.names[-1]), "python3", "-c",
                            f"import socket; socket.create_connection(('{self._subnet}.1', {port}), timeout=5)"],
                           check=True, capture_output=True, timeout=30)
            accepted.join(timeout=5)
            assert not accepted.is_alive()

    def _remove_namespaces(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "netns", "del", self.namespace(name)], capture_output=True)
        subprocess.run(["ip", "link", "del", f"cqb{self._tag}"], capture_output=True)
