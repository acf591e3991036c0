"""Every Prometheus metric of difusor (prefix `difusor_`), built per process without side effects.

Importing this module registers nothing: `OperatorMetrics()` and `AgentMetrics()` each make their
own registry, so tests can build as many as they like and the operator and the agent expose only
their own families. README.md lists every metric with its labels.
"""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)

#: Labels of every per-publication series of the operator.
PUBLICATION_LABELS = ("namespace", "publication")
#: Seconds: promotion phases and upload-to-live latency (a cut every 20 minutes, seconds count).
LATENCY_BUCKETS = (0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600)
#: Seconds: a CDN purge (one API call, or a batch with 429 backoff).
PURGE_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
#: Seconds: one availability probe.
PROBE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: Seconds: validating and storing one upload.
INGEST_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300)


class OperatorMetrics:
    """What the operator measures, by publication: promotions, purges, probes, incidents."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        pub = PUBLICATION_LABELS
        self.cuts_promoted = Counter(
            "difusor_cuts_promoted_total", "Cuts promoted on every serving pod.", pub, registry=r
        )
        self.promotion_phase = Histogram(
            "difusor_promotion_phase_seconds",
            "Duration of each phase of a promotion (Staging, Committing, Purging).",
            (*pub, "phase"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.upload_to_live = Histogram(
            "difusor_upload_to_live_seconds",
            "From the upload complete on one pod to the cut served by every serving pod.",
            pub,
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.promotion_failures = Counter(
            "difusor_promotion_failures_total",
            "Promotions that went wrong: StageTimeout, CommitTimeout, RolloutRetried, RolloutAbandoned.",
            (*pub, "reason"),
            registry=r,
        )
        self.rollout_age = Gauge(
            "difusor_rollout_age_seconds",
            "Age of the promotion in progress (0 when idle): a stuck rollout grows.",
            pub,
            registry=r,
        )
        self.active_cut_age = Gauge(
            "difusor_active_cut_age_seconds",
            "Now minus the cut time of the active cut (the institute publishes every 20 minutes).",
            pub,
            registry=r,
        )
        self.pods_off_active_cut = Gauge(
            "difusor_pods_off_active_cut",
            "Web pods that report serving a cut other than the active one.",
            pub,
            registry=r,
        )
        self.purge_seconds = Histogram(
            "difusor_purge_seconds",
            "Duration of a CDN purge after a promotion, by provider.",
            (*pub, "provider"),
            buckets=PURGE_BUCKETS,
            registry=r,
        )
        self.purge_failures = Counter(
            "difusor_purge_failures_total",
            "CDN purges that failed (the publication is Degraded until one succeeds).",
            (*pub, "provider"),
            registry=r,
        )
        self.probes = Counter(
            "difusor_probes_total",
            "Availability probes of the public path, by result (ok, failed).",
            (*pub, "result"),
            registry=r,
        )
        self.probe_seconds = Histogram(
            "difusor_probe_seconds",
            "Duration of one availability probe.",
            pub,
            buckets=PROBE_BUCKETS,
            registry=r,
        )
        self.availability = Gauge(
            "difusor_availability_ratio",
            "Share of successful probes in the current month (UTC), as in status.availability.",
            pub,
            registry=r,
        )
        self.incidents_open = Gauge(
            "difusor_incidents_open", "Incidents not yet resolved.", pub, registry=r
        )
        self.incidents = Counter(
            "difusor_incidents_total",
            "Incidents opened, by probable root cause.",
            (*pub, "cause"),
            registry=r,
        )
        self.denied_ranges = Gauge(
            "difusor_deny_list_entries",
            "Address ranges denied on every pod: spec.rateLimit.denyList plus automatic entries.",
            (*pub, "source"),
            registry=r,
        )

    def forget(self, namespace: str, publication: str) -> None:
        """Drop the series of a deleted publication (a stale gauge would keep alerting)."""
        for family in (
            self.rollout_age,
            self.active_cut_age,
            self.pods_off_active_cut,
            self.availability,
            self.incidents_open,
        ):
            try:
                family.remove(namespace, publication)
            except KeyError:
                continue


class AgentMetrics:
    """What one web pod's agent measures: ingest, serving (from nginx's access log), containment."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.cuts_received = Counter(
            "difusor_cuts_received_total",
            "Uploads complete and taken in by this pod (verified or rejected).",
            registry=r,
        )
        self.cuts_verified = Counter(
            "difusor_cuts_verified_total", "Uploads verified and stored as a version.", registry=r
        )
        self.cuts_rejected = Counter(
            "difusor_cuts_rejected_total",
            "Uploads rejected and quarantined, by reason (PathTraversal, ChecksumMismatch, ...).",
            ("reason",),
            registry=r,
        )
        self.ingest_bytes = Counter(
            "difusor_ingest_bytes_total",
            "Bytes of the versions stored from uploads (uncompressed).",
            registry=r,
        )
        self.ingest_seconds = Histogram(
            "difusor_ingest_seconds",
            "Time to validate and store one upload.",
            buckets=INGEST_BUCKETS,
            registry=r,
        )
        self.ingest_throughput = Gauge(
            "difusor_ingest_throughput_bytes_per_second",
            "Bytes per second of the last upload validated and stored.",
            registry=r,
        )
        self.requests = Counter(
            "difusor_http_requests_total",
            "Requests nginx answered on this pod, by status code (from the access log).",
            ("status",),
            registry=r,
        )
        self.rate_limited = Counter(
            "difusor_http_rate_limited_total",
            "Requests refused with 429 by the per-client limits.",
            registry=r,
        )
        self.denied = Counter(
            "difusor_http_denied_total", "Requests refused with 403 by a deny list.", registry=r
        )
        self.bytes_served = Counter(
            "difusor_http_response_bytes_total",
            "Body bytes nginx sent on this pod.",
            registry=r,
        )
        self.attack_signal = Gauge(
            "difusor_attack_signal",
            "1 while the last complete minute of this pod's traffic looks like an attack.",
            registry=r,
        )
        self.deny_list = Gauge(
            "difusor_deny_list_applied_entries",
            "Automatic deny-list entries in force on this pod.",
            registry=r,
        )
        self.serving_active = Gauge(
            "difusor_serving_active_cut",
            "1 when this pod serves the publication's active cut, else 0.",
            registry=r,
        )
        self.content_checked = Counter(
            "difusor_content_checked_files_total",
            "Served files re-hashed against the cut's manifest by the background check.",
            registry=r,
        )
        self.content_corrupt = Counter(
            "difusor_content_corrupt_total",
            "Times the background check found a served file that differs from the manifest.",
            registry=r,
        )
        self.content_repairs = Counter(
            "difusor_content_repairs_total",
            "Versions re-fetched from a peer after a corrupt file was found.",
            registry=r,
        )


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The text exposition of a registry and its content type (for a server of our own)."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


def serve(registry: CollectorRegistry, *, address: str, port: int) -> WSGIServer:
    """Serve /metrics of a registry on address:port in a daemon thread; returns the server."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return server
