"""Hosts of their own for fleet tests and benches: a Linux network namespace per host.

Each ``Host`` is a network namespace (``ip netns``) joined to this machine by a veth pair: the host
sees this machine as ``gateway`` (10.213.N.1) and is 10.213.N.2 itself. Its loopback is its own, so
a process in it cannot reach PostgreSQL, Redis or the S3 server on this machine's 127.0.0.1; it
reaches them only through the TCP forwarders ``Host.expose`` opens on the gateway address. So a
worker on such a host shares nothing with the web process but those TCP ports (and its private
temp and media folders prove it reads no file of the web's).

Making namespaces needs root (CAP_NET_ADMIN). ``namespaces_available`` says whether this machine
allows it; where it does not, the tests fall back to private folders only, and say so.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

_numbers = itertools.count(1)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


def namespaces_available() -> bool:
    """True when this process may create network namespaces and veth pairs (root, ``ip`` present)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        return False
    name = f"lsgprobe{os.getpid() % 100000}"
    try:
        _ip("netns", "add", name)
    except (subprocess.CalledProcessError, OSError):
        return False
    with contextlib.suppress(subprocess.CalledProcessError):
        _ip("netns", "delete", name)
    return True


class Forwarder:
    """A TCP forwarder: connections to ``listen`` are piped to ``target`` (both (host, port))."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int]) -> None:
        self.target = target
        self.server = socket.create_server(listen, reuse_port=False)
        self.server.settimeout(0.5)
        self.address = self.server.getsockname()[:2]
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closed.is_set():
            try:
                client, _ = self.server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            client.settimeout(None)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(256 * 1024):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed.set()
        self.server.close()
        self.thread.join(timeout=2)


class Host:
    """A network namespace with one veth link to this machine (see the module's docstring)."""

    def __init__(self, label: str) -> None:
        n = next(_numbers)
        tag = f"{os.getpid() % 100000}{n}"
        self.label = label
        self.netns = f"labseg-{label}-{tag}"
        self.outer, self.inner = f"lsg{tag}a", f"lsg{tag}b"
        subnet = (os.getpid() + n) % 250 + 1
        self.gateway, self.address = f"10.213.{subnet}.1", f"10.213.{subnet}.2"
        self.forwarders: list[Forwarder] = []
        _ip("netns", "add", self.netns)
        try:
            _ip("link", "add", self.outer, "type", "veth", "peer", "name", self.inner)
            _ip("link", "set", self.inner, "netns", self.netns)
            _ip("addr", "add", f"{self.gateway}/30", "dev", self.outer)
            _ip("link", "set", self.outer, "up")
            inside = ["netns", "exec", self.netns, "ip"]
            _ip(*inside, "addr", "add", f"{self.address}/30", "dev", self.inner)
            _ip(*inside, "link", "set", self.inner, "up")
            _ip(*inside, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def expose(self, port: int) -> int:
        """Forward ``gateway:port`` to this machine's ``127.0.0.1:port``; returns the port."""
        self.forwarders.append(Forwarder((self.gateway, port), ("127.0.0.1", port)))
        return port

    def command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns, *argv]

    def reaches(self, address: str, port: int) -> bool:
        """Whether a TCP connection from inside this host to ``address:port`` succeeds."""
        probe = f"import socket; socket.create_connection(({address!r}, {port}), timeout=2)"
        done = subprocess.run(self.command([sys.executable, "-c", probe]), capture_output=True, timeout=20)
        return done.returncode == 0

    def remove(self) -> None:
        for forwarder in self.forwarders:
            forwarder.close()
        self.forwarders.clear()
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("link", "delete", self.outer)
        with contextlib.suppress(subprocess.CalledProcessError):
            _ip("netns", "delete", self.netns)


@contextlib.contextmanager
def hosts(labels: list[str], ports: list[int]) -> Iterator[dict[str, Host]]:
    """One ``Host`` per label, each given forwarders to ``ports``; removed at the end."""
    made: dict[str, Host] = {}
    try:
        for label in labels:
            made[label] = Host(label)
            for port in ports:
                made[label].expose(port)
        yield made
    finally:
        for host in made.values():
            host.remove()


def private_folders(root: Path, label: str) -> dict[str, str]:
    """Environment of a worker with its own temp, var and media folders under ``root/label``."""
    base = root / f"host-{label}"
    folders = {name: base / name for name in ("tmp", "var", "media")}
    for folder in folders.values():
        folder.mkdir(parents=True, exist_ok=True)
    return {
        "TMPDIR": str(folders["tmp"]),
        "LABSEG_VAR_DIR": str(folders["var"]),
        "LABSEG_MEDIA_ROOT": str(folders["media"]),
    }
