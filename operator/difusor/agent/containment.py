"""The automatic deny list on this pod: the operator's entries as nginx `deny` lines, and a reload.

The operator writes the entries into the publication's status.containment; every agent writes
them to `containment/deny.conf` on the content volume (nginx.conf includes `containment/*.conf`
in its server block) and reloads nginx with SIGHUP — a graceful reload: workers finish their
requests, the limit_req zones keep their state. Reloads are coalesced: only when the file
changed, and at most one per RELOAD_EVERY seconds, so a burst of entries or a flapping range
never becomes a reload storm. The spec's own denyList is rendered in nginx.conf and never here.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

from difusor.render.nginx import CONTAINMENT_DIR

log = logging.getLogger("difusor.agent")

#: Fewest seconds between two reloads of nginx for the deny list.
RELOAD_EVERY = 5.0
DENY_FILE = "deny.conf"


def render_deny(cidrs: Sequence[str]) -> str:
    """The included file: one `deny` per range (normalised), nothing when the list is empty."""
    lines = ["# Written by the difusor agent from status.containment: do not edit."]
    for cidr in dict.fromkeys(str(ipaddress.ip_network(c, strict=False)) for c in cidrs):
        lines.append(f"deny {cidr};")
    return "\n".join(lines) + "\n"


class DenyList:
    """Keeps containment/deny.conf equal to the operator's entries and nginx reloaded."""

    def __init__(self, content_dir: Path, pid_file: Path) -> None:
        self.directory = content_dir / CONTAINMENT_DIR
        self.pid_file = pid_file
        self.pending = False
        self.last_reload = 0.0
        self.applied: tuple[str, ...] | None = None

    def apply(self, cidrs: Sequence[str]) -> bool:
        """Write the entries when they changed and reload nginx when allowed; True on a reload."""
        wanted = tuple(sorted(cidrs))
        if wanted != self.applied:
            # No entries is no file: nginx's include then matches nothing.
            text = render_deny(wanted) if wanted else None
            path = self.directory / DENY_FILE
            current = path.read_text() if path.exists() else None
            if current != text:
                if text is None:
                    path.unlink()
                else:
                    self.directory.mkdir(parents=True, exist_ok=True)
                    temporary = path.with_suffix(".tmp")
                    temporary.write_text(text)
                    os.replace(temporary, path)
                self.pending = True
            self.applied = wanted
        if not self.pending or time.monotonic() - self.last_reload < RELOAD_EVERY:
            return False
        try:
            pid = int(self.pid_file.read_text().strip())
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError) as exc:
            log.warning("Could not reload nginx for the deny list (%s): %s", self.pid_file, exc)
            return False
        self.pending = False
        self.last_reload = time.monotonic()
        log.info("Reloaded nginx with %d automatic deny-list entries", len(wanted))
        return True
