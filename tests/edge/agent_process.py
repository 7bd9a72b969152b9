"""An agent run as a real subprocess (``factory-twin agent run``), for tests that kill it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


class AgentProcess:
    """An agent subprocess whose stderr is read on a thread, so a test can wait for a log event.

    Args:
        site: the site file.
        data: the agent's data directory (its outbox survives a kill).
        gateway: gateway id.
        host: platform broker host.
        port: platform broker port.
    """

    def __init__(self, site: Path, data: Path, gateway: str, host: str, port: int) -> None:
        args = [
            sys.executable,
            "-m",
            "factory_twin",
            "agent",
            "run",
            "--site",
            str(site),
            "--gateway",
            gateway,
            "--broker",
            f"mqtt://{host}:{port}",
            "--data-dir",
            str(data),
            "--metrics-port",
            "-1",
        ]
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def wait_for(self, event: str, timeout: float = 30.0) -> None:
        """Wait until the agent logged ``event``."""
        deadline = time.monotonic() + timeout
        while not any(event in x for x in self.lines):
            assert self.proc.poll() is None, "".join(self.lines)
            assert time.monotonic() < deadline, f"no {event}:\n" + "".join(self.lines[-30:])
            time.sleep(0.02)

    def stop(self, sig: int) -> None:
        """Signal the agent and wait for it to end."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(30)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


class MuteProxy:
    """A TCP proxy to a broker whose client-to-broker direction can be muted: after ``mute()`` the broker hears
    nothing more from the connections then open (no PUBACK reaches it), while they still receive. Later
    connections pass both ways.

    Args:
        host: the broker's host.
        port: the broker's port.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open: list[socket.socket] = []
        self._muted: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._open.append(client)
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (from_client and src in self._muted):
                    dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def mute(self) -> None:
        """From now on drop what the connections open now send to the broker."""
        self._muted.update(self._open)

    def close(self) -> None:
        """Stop accepting; open connections end with their ends."""
        self.listener.close()
