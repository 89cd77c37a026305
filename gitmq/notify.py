"""systemd's notify protocol: tell the service manager the node is ready, how it is
doing, that it is alive (the watchdog) and that it is stopping.

The protocol is one datagram of ``KEY=VALUE`` lines to the unix socket named by
``$NOTIFY_SOCKET`` (a leading ``@`` names an abstract socket); see sd_notify(3).
It is written here in a few lines rather than taken from a library: systemd-python
needs libsystemd's headers to build and sdnotify is unmaintained, while the
protocol itself has not changed since systemd 1. Without ``$NOTIFY_SOCKET`` (not
run by systemd, or ``Type=simple``) every call does nothing.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger("gitmq.notify")


class Notifier:
    """The node's line to systemd (``Type=notify``, ``WatchdogSec=``)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog = watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, *lines: str) -> bool:
        """Send ``lines`` (``READY=1``, ``STATUS=...``) as one datagram; False when
        there is no socket or the send failed (logged: systemd will notice on its own)."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall("\n".join(lines).encode())
        except OSError as exc:
            log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), exc)
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def pet(self) -> bool:
        """The watchdog's keep-alive (only when systemd asked for one)."""
        return self.watchdog is not None and self.send("WATCHDOG=1")

    def stopping(self, status: str) -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")


def watchdog_seconds(environ: Mapping[str, str]) -> float | None:
    """The watchdog timeout systemd set for this process (``$WATCHDOG_USEC``), or None:
    unset, malformed, or meant for another process (``$WATCHDOG_PID``)."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and (not pid.isdigit() or int(pid) != os.getpid()):
        return None
    return int(usec) / 1_000_000
