"""An agent run as a real subprocess (``factory-twin agent run``), for tests that kill it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

# the agent's test hook: block right after the first COMMIT that has acks, before any PUBACK
HOLD_ENV = "FACTORY_TWIN_TEST_HOLD_AFTER_COMMIT"


class AgentProcess:
    """An agent subprocess whose stderr is read on a thread, so a test can wait for a log event.

    Args:
        site: the site file.
        data: the agent's data directory (its outbox survives a kill).
        gateway: gateway id.
        host: platform broker host.
        port: platform broker port.
        hold: set the test hook that blocks the agent between its first commit and the PUBACKs.
    """

    def __init__(self, site: Path, data: Path, gateway: str, host: str, port: int, hold: bool = False) -> None:
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
        env = {k: v for k, v in os.environ.items() if k != HOLD_ENV}
        if hold:
            env[HOLD_ENV] = "1"
        self.proc = subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)
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
