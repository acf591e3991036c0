"""The agent's statistics loop: compact the pod's access log and ship it to the API, rotating it.

Where statistics live: in ConfigMaps of the publication's namespace, one per pod and clock hour
(`<pod>-stats-<YYYYMMDDHH>-<part>`, binaryData from `logic.stats.HourStats.payload`, labelled
with the publication, the pod and the hour), rewritten every `statistics.shipIntervalSeconds`
while the hour is open. The API outlives any pod and volume: deleting a pod, scaling down and
restarting every pod lose none of what was shipped, and the report reads only these objects.

Nothing shipped twice, nothing skipped: each hour records the log position (generation, offset)
of the last line it counted. A restarted agent replays the log files still on its volume from
their start and counts a line only in an hour that has not counted its position yet; lines a
killed pod wrote after its last ship are shipped when it starts again with its volume.

Logs stay bounded: once `access.log` passes `statistics.logRotateSize` and has been read, the
agent renames it `access.log.1` and signals nginx (SIGUSR1, shared process namespace) to reopen;
`access.log.1` is removed once read to its end, shipped, and nginx has moved to the new file.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from kubernetes import client as k8s

from difusor.kube import API_ERRORS, STRATEGIC_MERGE_PATCH, core_path, custom_path, read, request
from difusor.logic.archive import parse_quantity
from difusor.logic.stats import Compactor, HourStats, PageRules
from difusor.models import GROUP, PrepPublicationSpec
from difusor.render.labels import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    NAME_LABEL,
    PUBLICATION_LABEL,
    STATS_COMPONENT,
    STATS_HOUR_LABEL,
    STATS_POD_LABEL,
    owner_reference,
)

log = logging.getLogger("difusor.agent.stats")

CURSOR_ANNOTATION = f"{GROUP}/log-cursor"
#: The cursor is written when the live log it names changes (a rotation, a new volume) and
#: again after this many seconds, so that one deleted by hand comes back; not on every pass.
CURSOR_REFRESH_SECONDS = 600.0
LOG_NAME = "access.log"
ROTATED_NAME = "access.log.1"
#: After SIGUSR1, how long before the rotated file may be removed. A worker writes what it
#: buffered into the old file as it reopens (ngx_reopen_files flushes before it opens the new
#: one), and takes the signal within milliseconds; a second, as nginx's own advice on rotation
#: has it, covers a busy worker. The lines of the grace stay on disk until it ends: at 2 s, a
#: flood of readers (1.6 MB of log a second on each of three pods) held 8-9 MB per pod.
REOPEN_GRACE_SECONDS = 1.0
#: How long after the grace the pass that may remove the rotated file comes.
_AFTER_GRACE = 0.05
_READ_CHUNK = 4 << 20


def hour_stamp(hour: int) -> str:
    """`YYYYMMDDHH` (UTC) of an hour start."""
    return datetime.fromtimestamp(hour, UTC).strftime("%Y%m%d%H")


def stats_object_name(pod: str, hour: int, part: int) -> str:
    """The ConfigMap holding one part of a pod's hour."""
    return f"{pod}-stats-{hour_stamp(hour)}-{part}"


def cursor_name(pod: str) -> str:
    """The ConfigMap holding where a pod's agent is in its log files (a hint for restarts)."""
    return f"{pod}-stats-cursor"


def page_rules(spec: PrepPublicationSpec) -> PageRules:
    """Pages, views and polls of a publication."""
    return PageRules(
        view_prefixes=tuple(spec.statistics.view_paths),
        poll_paths=tuple(spec.cache.no_store_paths),
    )


def read_hour(api: k8s.ApiClient, *, namespace: str, pod: str, hour: int) -> HourStats | None:
    """A pod's hour as shipped (every part), or None."""
    files: dict[str, bytes] = {}
    part = 0
    while True:
        cm = read(api, core_path(namespace, "configmaps", stats_object_name(pod, hour, part)))
        if cm is None:
            break
        files.update(_binary(cm))
        part += 1
    return HourStats.from_payload(files) if files else None


def _binary(cm: dict[str, Any]) -> dict[str, bytes]:
    import base64

    return {k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()}


@dataclass
class _File:
    path: Path
    inode: int
    generation: int
    offset: int = 0


class StatsShipper:
    """One pod's log compaction and shipping; `step()` is one pass.

    `read_publication` gives the publication at each pass (the agent's copy, kept by its watch);
    without it each pass reads it from the API server.
    """

    def __init__(
        self,
        api: k8s.ApiClient,
        *,
        namespace: str,
        publication: str,
        pod: str,
        log_dir: Path,
        nginx_pid_file: Path,
        read_publication: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.publication = publication
        self.read_publication = read_publication or self._get_publication
        self.pod = pod
        self.log_dir = log_dir
        self.nginx_pid_file = nginx_pid_file
        self.compactor: Compactor | None = None
        self.files: list[_File] = []
        self.generation = 0
        self.signalled_at: float | None = None
        self.metadata: dict[str, Any] = {}
        self.rotate_bytes = parse_quantity("64Mi")
        self.interval = 10.0
        #: The (generation, inode) last written to the cursor, and when (monotonic).
        self.cursor_written: tuple[tuple[int, int], float] | None = None

    # --- setup -----------------------------------------------------------------------------

    def _get_publication(self) -> dict[str, Any]:
        found: dict[str, Any] = request(
            self.api, "GET", custom_path(self.namespace, "preppublications", self.publication)
        )
        return found

    def _configure(self) -> None:
        publication = self.read_publication()
        spec = PrepPublicationSpec.model_validate(publication.get("spec") or {})
        self.metadata = publication["metadata"]
        self.rotate_bytes = parse_quantity(spec.statistics.log_rotate_size)
        self.interval = float(spec.statistics.ship_interval_seconds)
        if self.compactor is None:
            self.compactor = Compactor(
                page_rules(spec),
                salt=self.metadata["uid"].encode(),
                gap_ms=spec.statistics.session_timeout_minutes * 60_000,
                loader=lambda hour: read_hour(
                    self.api, namespace=self.namespace, pod=self.pod, hour=hour
                ),
            )
            self._restore()
        else:
            self.compactor.rules = page_rules(spec)

    def _restore(self) -> None:
        """Map the log files on the volume to generations, and replay them from their start."""
        cursor: dict[str, int] = {}
        cm = read(self.api, core_path(self.namespace, "configmaps", cursor_name(self.pod)))
        if cm is not None:
            notes = cm["metadata"].get("annotations") or {}
            cursor = json.loads(notes.get(CURSOR_ANNOTATION, "{}"))
        rotated, live = self._inode(ROTATED_NAME), self._inode(LOG_NAME)
        known_gen, known_inode = int(cursor.get("generation", -1)), cursor.get("inode")
        if rotated is not None and rotated == known_inode:
            gens = (known_gen, known_gen + 1)
        elif live is not None and live == known_inode:
            gens = (known_gen - 1, known_gen)
        else:
            # A new volume (or the first start): these files are newer than anything counted.
            gens = (known_gen + 1, known_gen + 2)
        self.files = []
        if rotated is not None:
            self.files.append(_File(self.log_dir / ROTATED_NAME, rotated, gens[0]))
        if live is not None:
            self.files.append(_File(self.log_dir / LOG_NAME, live, gens[1]))
        self.generation = gens[1]
        log.info(
            "Replaying %d access log file(s) of pod %s from generation %d",
            len(self.files), self.pod, gens[0] if rotated is not None else gens[1],
        )  # fmt: skip

    def _inode(self, name: str) -> int | None:
        """The file's identity, or None until it holds a whole first line."""
        try:
            with (self.log_dir / name).open("rb") as handle:
                return _identity(handle)
        except FileNotFoundError:
            return None

    # --- one pass --------------------------------------------------------------------------

    def step(self) -> int:
        """Read new lines, ship the hours they touched, then rotate or clean up. Lines read."""
        self._configure()
        assert self.compactor is not None
        self._track_new_file()
        lines = sum(self._read(f) for f in self.files)
        self._ship()
        self._rotate_or_clean()
        return lines

    def _track_new_file(self) -> None:
        live = self._inode(LOG_NAME)
        if live is not None and all(f.inode != live for f in self.files):
            self.generation += 1
            self.files.append(_File(self.log_dir / LOG_NAME, live, self.generation))

    def _read(self, file: _File) -> int:
        assert self.compactor is not None
        try:
            handle = file.path.open("rb")
        except FileNotFoundError:
            return 0
        count = 0
        with handle:
            if _identity(handle) != file.inode:
                return 0
            handle.seek(file.offset)
            while True:
                chunk = handle.read(_READ_CHUNK)
                if not chunk:
                    break
                end = chunk.rfind(b"\n")
                if end < 0:
                    if len(chunk) < _READ_CHUNK:
                        break  # a line still being written
                    end = len(chunk) - 1  # a line longer than a chunk: counted malformed
                offset = file.offset
                for raw in chunk[: end + 1].splitlines(keepends=True):
                    offset += len(raw)
                    self.compactor.feed(raw.decode("utf-8", "replace"), (file.generation, offset))
                    count += 1
                file.offset += end + 1
                handle.seek(file.offset)
        return count

    def _ship(self) -> None:
        assert self.compactor is not None
        for hour in sorted(self.compactor.dirty):
            stats = self.compactor.hours[hour]
            payload = stats.payload()
            parts = _parts(payload)
            for index, files in enumerate(parts):
                self._put(stats_object_name(self.pod, hour, index), hour, index, files)
            self.compactor.dirty.discard(hour)
        current = self.files[-1] if self.files else None
        if current is not None:
            self._put_cursor(current.generation, current.inode)
        self.compactor.forget_before(int(time.time()) // 3600 * 3600 - 3600)

    def _labels(self, hour: int | None) -> dict[str, str]:
        # Not managed-by=difusor: the operator prunes the ConfigMaps it manages and did not render.
        labels = {
            NAME_LABEL: "difusor",
            INSTANCE_LABEL: self.publication,
            COMPONENT_LABEL: STATS_COMPONENT,
            PUBLICATION_LABEL: self.publication,
            STATS_POD_LABEL: self.pod,
        }
        if hour is not None:
            labels[STATS_HOUR_LABEL] = hour_stamp(hour)
        return labels

    def _put(self, name: str, hour: int, part: int, files: dict[str, bytes]) -> None:
        import base64

        body = self._config_map(
            name, self._labels(hour), {f"{GROUP}/part": str(part)},
            binaryData={k: base64.b64encode(v).decode() for k, v in files.items()},
        )  # fmt: skip
        self._upsert(name, body)

    def _put_cursor(self, generation: int, inode: int) -> None:
        """Which generation the live log is: what a restarted agent needs to tell its files
        apart (`_restore`); the hours' objects say which lines of each were counted.

        Written when it changes and every CURSOR_REFRESH_SECONDS: on every pass it was half of
        the statistics' writes to the API server, one per pod every shipIntervalSeconds all night.
        """
        now = time.monotonic()
        if self.cursor_written is not None:
            written, at = self.cursor_written
            if written == (generation, inode) and now - at < CURSOR_REFRESH_SECONDS:
                return
        name = cursor_name(self.pod)
        cursor = {"generation": generation, "inode": inode}
        body = self._config_map(name, self._labels(None), {CURSOR_ANNOTATION: json.dumps(cursor)})
        self._upsert(name, body)
        self.cursor_written = ((generation, inode), now)

    def _config_map(
        self, name: str, labels: dict[str, str], annotations: dict[str, str], **data: Any
    ) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    owner_reference(self.publication, self.metadata["uid"], controller=False)
                ],
            },
            **data,
        }

    def _upsert(self, name: str, body: dict[str, Any]) -> None:
        # patch, not update: the operator may grant the agents only verbs it holds itself.
        path = core_path(self.namespace, "configmaps")
        try:
            request(
                self.api, "PATCH", f"{path}/{name}", body=body, content_type=STRATEGIC_MERGE_PATCH
            )
        except k8s.ApiException as exc:
            if exc.status != 404:
                raise
            request(self.api, "POST", path, body=body)

    def pause(self) -> float:
        """Seconds until the next pass: the interval, or less once a rotation is pending, so
        that the rotated file goes (and the live one may rotate) as soon as the grace ends."""
        if self.signalled_at is not None:
            left = REOPEN_GRACE_SECONDS - (time.monotonic() - self.signalled_at)
            if left > 0:
                return min(self.interval, left + _AFTER_GRACE)
        return self.interval

    def _rotate_or_clean(self) -> None:
        rotated = next((f for f in self.files if f.path.name == ROTATED_NAME), None)
        if rotated is not None:
            waited = (
                self.signalled_at is None
                or time.monotonic() - self.signalled_at > REOPEN_GRACE_SECONDS
            )
            if not (self.log_dir / LOG_NAME).exists():
                # nginx has not reopened yet (or the agent stopped between rename and signal).
                # Once it has, the new file may stay empty for long (no reader after the
                # rotation): the rotated one goes anyway, it gets no more lines.
                if waited:
                    self._signal_nginx()
                return
            if not (waited and self._read(rotated) == 0 and self._consumed(rotated)):
                return
            rotated.path.unlink(missing_ok=True)
            self.files.remove(rotated)
            self.signalled_at = None
            log.info("Removed %s of pod %s (read and shipped)", rotated.path.name, self.pod)
            # The live log may be due already: waiting for the next pass let it grow for one
            # more interval on every rotation (a third more on disk under steady traffic).
        live = next((f for f in self.files if f.path.name == LOG_NAME), None)
        # Not waiting for the whole file to be read: under steady traffic nginx appends between
        # the read and this check every time, and the log grew until the traffic paused. The
        # rotated file keeps its generation and is read to its end before it is removed.
        if live is not None and live.offset >= self.rotate_bytes:
            if self._nginx_pid() is None:
                log.warning("Not rotating %s: no nginx pid in %s", live.path, self.nginx_pid_file)
                return
            target = self.log_dir / ROTATED_NAME
            live.path.rename(target)
            live.path = target
            self._signal_nginx()
            log.info("Rotated the access log of pod %s at %d bytes", self.pod, live.offset)

    def _signal_nginx(self) -> None:
        pid = self._nginx_pid()
        self.signalled_at = time.monotonic()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError as exc:
            log.warning("Could not signal nginx (pid %d) to reopen its log: %s", pid, exc)

    def _consumed(self, file: _File) -> bool:
        try:
            return file.path.stat().st_size == file.offset
        except FileNotFoundError:
            return True

    def _nginx_pid(self) -> int | None:
        try:
            return int(self.nginx_pid_file.read_text().strip())
        except (OSError, ValueError):
            return None


def _identity(handle: BinaryIO) -> int | None:
    """Inode salted with the first line: a new volume may reuse an inode number."""
    head = handle.readline(512)
    if not head.endswith(b"\n") and len(head) < 512:
        return None
    return os.fstat(handle.fileno()).st_ino ^ (zlib.crc32(head) << 32)


def _parts(payload: dict[str, bytes]) -> list[dict[str, bytes]]:
    """counts and the first segment chunk in part 0, one segment chunk per further part."""
    chunks = sorted((n for n in payload if n.startswith("segments-")), key=_chunk_index)
    first = {"counts.json.z": payload["counts.json.z"]}
    if chunks:
        first[chunks[0]] = payload[chunks[0]]
    return [first, *({name: payload[name]} for name in chunks[1:])]


def _chunk_index(name: str) -> int:
    return int(name.split("-", 1)[1].split(".", 1)[0])


def run_loop(shipper: StatsShipper, *, stopping: threading.Event) -> None:
    """Ship every statistics.shipIntervalSeconds until `stopping`, then once more (SIGTERM)."""
    while True:
        try:
            shipper.step()
        except (*API_ERRORS, OSError, ValueError) as exc:
            log.warning("Statistics pass of pod %s failed: %s", shipper.pod, exc)
        if stopping.wait(shipper.pause()):
            break
    try:
        shipper.step()
        log.info("Shipped the last statistics of pod %s", shipper.pod)
    except (*API_ERRORS, OSError, ValueError) as exc:
        log.warning("Last statistics pass of pod %s failed: %s", shipper.pod, exc)
