"""The PrepPublication and PrepCut resources as pydantic models: the one source of the CRDs."""

from __future__ import annotations

import ipaddress
import re
import zoneinfo
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "prep.difusor.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: RFC 1123 host name (what an Ingress host accepts), lower case.
HOST_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: Kubernetes quantity, as used for storage sizes.
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
#: A cut id: letters, digits, `_`, `.` and `-` (the institute's ids look like 20240602_2040).
CUT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
#: A Kubernetes object name (RFC 1123 subdomain).
NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A URL path served by the site.
PATH_PATTERN = r"^/[A-Za-z0-9._~!$&'()*+,;=:@%/-]*$"
#: An origin allowed to embed the site (`frame-ancestors` source expression).
ORIGIN_PATTERN = r"^(https?://)?(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^'self'$"
#: A duration in hours, minutes and seconds, as Go writes it (36h, 24h30m).
DURATION_PATTERN = r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"
#: The least time a site stays online after the window ends (the institute's call: one day).
MIN_KEEP_ONLINE = timedelta(hours=24)


def _check_cidr(value: str) -> str:
    try:
        ipaddress.ip_network(value, strict=False)
    except ValueError as exc:
        raise ValueError(f"{value!r} is not a CIDR range such as 10.0.0.0/8: {exc}") from exc
    return value


def _check_regex(value: str) -> str:
    try:
        compiled = re.compile(value)
    except re.error as exc:
        raise ValueError(f"{value!r} is not a valid regular expression: {exc}") from exc
    if "id" not in compiled.groupindex:
        raise ValueError(f"{value!r} needs a named group (?P<id>...) for the cut id")
    return value


def parse_duration(value: str) -> timedelta:
    """A duration such as 36h or 24h30m; ValueError when it is not one."""
    match = re.fullmatch(DURATION_PATTERN, value)
    if not value or match is None:
        raise ValueError(f"{value!r} is not a duration such as 24h or 36h30m")
    hours, minutes, seconds = (int(g[:-1]) if g else 0 for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


def _check_keep_online(value: str) -> str:
    if parse_duration(value) < MIN_KEEP_ONLINE:
        raise ValueError(f"keepOnline {value} is under 24h (the institute asks for a day at least)")
    return value


def _check_aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{value.isoformat()} needs a UTC offset, such as -06:00")
    return value


def _check_timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"{value!r} is not an IANA time zone such as America/Mexico_City") from exc
    return value


AwareTime = Annotated[datetime, AfterValidator(_check_aware)]
KeepOnline = Annotated[
    str,
    StringConstraints(pattern=DURATION_PATTERN, min_length=2, max_length=32),
    AfterValidator(_check_keep_online),
    Field(
        json_schema_extra={
            "format": "duration",
            "x-kubernetes-validations": [
                {
                    "rule": "self >= duration('24h')",
                    "message": "keepOnline must be at least 24h (the institute asks for a day)",
                }
            ],
        }
    ),
]
CIDR = Annotated[
    str,
    StringConstraints(min_length=2, max_length=43),
    AfterValidator(_check_cidr),
    Field(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "isCIDR(self)", "message": "must be a CIDR range such as 10.0.0.0/8"}
            ]
        }
    ),
]
Host = Annotated[str, StringConstraints(pattern=HOST_PATTERN, min_length=1, max_length=253)]
Quantity = Annotated[str, StringConstraints(pattern=QUANTITY_PATTERN, max_length=32)]
CutId = Annotated[str, StringConstraints(pattern=CUT_ID_PATTERN)]
ObjectName = Annotated[str, StringConstraints(pattern=NAME_PATTERN, min_length=1, max_length=253)]
UrlPath = Annotated[str, StringConstraints(pattern=PATH_PATTERN, max_length=1024)]
Origin = Annotated[str, StringConstraints(pattern=ORIGIN_PATTERN, max_length=253)]


class Model(BaseModel):
    """Base of every resource model: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def wire(self) -> dict[str, Any]:
        """This model as the API server stores it (camelCase, no unset optional fields)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StorageSpec(Model):
    """The per-pod volume holding incoming uploads, versions and quarantine."""

    size: Quantity = "20Gi"
    """Size of each pod's content volume (the institute asks for at least 20 GB)."""
    storage_class_name: str | None = None
    """StorageClass of the content volumes; the cluster default when unset."""
    retain_on_delete: bool = True
    """Keep the content volumes when the publication is deleted (the night's data is evidence)."""


class IssuerRef(Model):
    """A cert-manager issuer that signs the site's certificate."""

    name: ObjectName
    """Name of the Issuer or ClusterIssuer."""
    kind: Literal["Issuer", "ClusterIssuer"] = "ClusterIssuer"
    """Kind of the issuer."""
    group: str = "cert-manager.io"
    """API group of the issuer."""


class TLSSpec(Model):
    """HTTPS for the site: a Secret that holds the certificate, or a cert-manager issuer."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.secretName) || has(self.issuerRef)",
                    "message": "tls needs secretName or issuerRef",
                }
            ]
        }
    )

    secret_name: ObjectName | None = None
    """Secret of type kubernetes.io/tls with the certificate (written by cert-manager with issuerRef)."""
    issuer_ref: IssuerRef | None = None
    """cert-manager issuer that signs the certificate into secretName (default NAME-tls)."""

    @model_validator(mode="after")
    def _secret_or_issuer(self) -> TLSSpec:
        if self.secret_name is None and self.issuer_ref is None:
            raise ValueError("tls needs secretName or issuerRef")
        return self


class EdgeKind(StrEnum):
    """How readers reach the web pods."""

    INGRESS = "Ingress"
    GATEWAY = "Gateway"
    NONE = "None"


class ParentRef(Model):
    """A Gateway API Gateway (or listener) that the HTTPRoute attaches to."""

    name: ObjectName
    """Name of the Gateway."""
    namespace: ObjectName | None = None
    """Namespace of the Gateway; the publication's when unset."""
    section_name: str | None = None
    """Listener of the Gateway to attach to."""


class EdgeSpec(Model):
    """The edge in front of the web pods: an Ingress, a Gateway API HTTPRoute, or nothing."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.kind != 'Gateway' || (has(self.parentRefs) && size(self.parentRefs) > 0)",
                    "message": "edge.kind Gateway needs at least one entry in edge.parentRefs",
                    "fieldPath": ".parentRefs",
                }
            ]
        }
    )

    kind: EdgeKind = EdgeKind.INGRESS
    """Ingress, Gateway (an HTTPRoute) or None (bring your own edge to the NAME-http Service)."""
    class_name: str | None = None
    """IngressClass name (Ingress edge); also selects the rate-limit annotations (nginx, traefik)."""
    parent_refs: list[ParentRef] = Field(default_factory=list, max_length=16)
    """Gateways the HTTPRoute attaches to (Gateway edge)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations for the Ingress or HTTPRoute."""

    @model_validator(mode="after")
    def _gateway_needs_parents(self) -> EdgeSpec:
        if self.kind is EdgeKind.GATEWAY and not self.parent_refs:
            raise ValueError("edge.kind Gateway needs at least one entry in edge.parentRefs")
        return self


class ClientAddressHeader(StrEnum):
    """The header that carries the reader's address when it comes through a trusted proxy."""

    X_FORWARDED_FOR = "X-Forwarded-For"
    X_REAL_IP = "X-Real-IP"
    CF_CONNECTING_IP = "CF-Connecting-IP"
    FASTLY_CLIENT_IP = "Fastly-Client-IP"
    TRUE_CLIENT_IP = "True-Client-IP"


class RateLimitSpec(Model):
    """Per-client limits applied by every web pod, whatever the edge."""

    requests_per_second: int = Field(default=20, ge=1, le=100000)
    """Sustained requests per second allowed to one client address."""
    burst: int = Field(default=40, ge=0, le=1000000)
    """Requests above the rate that one client may queue before getting 429."""
    connections: int = Field(default=30, ge=1, le=100000)
    """Concurrent connections allowed to one client address."""
    trusted_proxies: list[CIDR] = Field(default_factory=list, max_length=256)
    """Ranges of proxies (ingress, CDN) whose client-address header is believed."""
    client_address_header: ClientAddressHeader = ClientAddressHeader.X_FORWARDED_FOR
    """Header holding the reader's address when the request comes from a trusted proxy."""
    deny_list: list[CIDR] = Field(default_factory=list, max_length=4096)
    """Ranges refused outright (403); the operator may add offending ranges here."""


class SftpServiceType(StrEnum):
    """Type of the SFTP Service."""

    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class SftpServiceSpec(Model):
    """How the institute's uploader reaches the SFTP endpoint."""

    type: SftpServiceType = SftpServiceType.LOAD_BALANCER
    """Service type of NAME-sftp."""
    port: int = Field(default=22, ge=1, le=65535)
    """Port of the SFTP Service."""
    node_port: int | None = Field(default=None, ge=30000, le=32767)
    """Fixed node port (type NodePort or LoadBalancer)."""
    annotations: dict[str, str] = Field(default_factory=dict)
    """Extra annotations for the Service (load-balancer settings of your cloud)."""


class SftpSpec(Model):
    """The SFTP endpoint that receives the institute's packages."""

    service: SftpServiceSpec = Field(default_factory=SftpServiceSpec)
    """The SFTP Service."""
    allowed_source_ranges: list[CIDR] = Field(default_factory=list, max_length=256)
    """Source ranges allowed to connect (the institute's addresses); empty allows all."""
    authorized_keys_secret: ObjectName
    """Secret whose `authorized_keys` key holds the public keys allowed to upload."""
    user: Annotated[str, StringConstraints(pattern=r"^[a-z_][a-z0-9_-]{0,31}$")] = "prep"
    """User name the uploader logs in as."""


class Completion(StrEnum):
    """How the agent knows an upload is complete."""

    RENAME = "rename"
    CHECKSUM_FILE = "checksumFile"
    QUIET = "quiet"


class IngestMode(StrEnum):
    """What a package holds."""

    SNAPSHOT = "snapshot"
    OVERLAY = "overlay"


class IngestSpec(Model):
    """How uploads are recognised, validated and turned into cuts."""

    completion: Completion = Completion.RENAME
    """rename (temporary name then rename), checksumFile (ARCHIVE.sha256 arrives) or quiet."""
    quiet_seconds: int = Field(default=10, ge=1, le=3600)
    """With completion quiet: seconds without writes after which an upload is complete."""
    partial_ttl_seconds: int = Field(default=3600, ge=60, le=604800)
    """Partial uploads older than this are removed."""
    mode: IngestMode = IngestMode.SNAPSHOT
    """snapshot (the whole site) or overlay (changed files on top of the active version)."""
    cut_id_pattern: Annotated[str, AfterValidator(_check_regex)] = r"(?P<id>\d{8}_\d{4})"
    """Regular expression over the archive name with a named group `id` (the cut id, YYYYMMDD_HHMM)."""
    timezone: Annotated[str, AfterValidator(_check_timezone)] = "America/Mexico_City"
    """IANA time zone of the cut times in archive names."""
    max_bytes: Quantity = "20Gi"
    """Largest total uncompressed size of a cut."""
    max_files: int = Field(default=200000, ge=1, le=10000000)
    """Most files in a cut."""
    max_compression_ratio: int = Field(default=100, ge=2, le=100000)
    """Largest uncompressed/compressed ratio (a higher one is treated as a compression bomb)."""
    disk_reserve_percent: int = Field(default=10, ge=0, le=90)
    """Free share of the content volume that an extraction may never take."""


class CacheSpec(Model):
    """Cache headers of the site."""

    no_store_paths: list[UrlPath] = Field(
        default_factory=lambda: ["/json/main.json"], max_length=64
    )
    """Paths served with Cache-Control: no-cache, no-store, must-revalidate."""
    max_age_seconds: int = Field(default=30, ge=0, le=86400)
    """max-age of every other file."""


class StatisticsSpec(Model):
    """Visitor statistics compacted from every pod's access log (see README: Statistics)."""

    view_paths: list[UrlPath] = Field(default_factory=lambda: ["/json/"], max_length=256)
    """Views that count as pages besides HTML: a path ending in / is a prefix, others exact.
    The default fits the institute's single-page site, where every view loads its own JSON
    under /json/ (the no-store paths such as /json/main.json count as polls, not pages)."""
    session_timeout_minutes: int = Field(default=30, ge=1, le=1440)
    """A visit ends after this long without a request."""
    log_rotate_size: Quantity = "64Mi"
    """The agent rotates the access log at this size, once compacted (at most two on disk)."""
    ship_interval_seconds: int = Field(default=10, ge=1, le=300)
    """How often each agent ships its statistics to the API (the most a killed pod can delay)."""


class EmbeddingSpec(Model):
    """Which portals may embed the site in a frame."""

    allowed_origins: list[Origin] = Field(default_factory=list, max_length=64)
    """Origins listed in Content-Security-Policy frame-ancestors ('self' is always allowed)."""


class CdnProvider(StrEnum):
    """CDN whose cache is purged after every promotion."""

    NONE = "none"
    CLOUDFLARE = "cloudflare"
    FASTLY = "fastly"
    AKAMAI = "akamai"
    CLOUDFRONT = "cloudfront"
    VARNISH = "varnish"
    WEBHOOK = "webhook"


class CdnSpec(Model):
    """The CDN in front of the site, purged once every serving pod has swapped to a new cut."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.provider in ['none', 'varnish'] || has(self.credentialsSecret)",
                    "message": "cdn.provider needs cdn.credentialsSecret",
                    "fieldPath": ".credentialsSecret",
                },
                {
                    "rule": "!(self.provider in ['cloudflare', 'fastly', 'cloudfront']) || has(self.zone)",
                    "message": "cdn.provider cloudflare, fastly and cloudfront need cdn.zone",
                    "fieldPath": ".zone",
                },
                {
                    "rule": "!(self.provider in ['varnish', 'webhook']) || has(self.endpoint)",
                    "message": "cdn.provider varnish and webhook need cdn.endpoint",
                    "fieldPath": ".endpoint",
                },
                {
                    "rule": "self.provider != 'varnish' || (has(self.purgers) && size(self.purgers) > 0)",
                    "message": "cdn.provider varnish needs cdn.purgers (the operator's addresses)",
                    "fieldPath": ".purgers",
                },
                {
                    "rule": "!(self.provider in ['fastly', 'akamai']) || !has(self.prefixes) || size(self.prefixes) == 0",
                    "message": "cdn.prefixes: fastly and akamai have no prefix purge",
                    "fieldPath": ".prefixes",
                },
                {
                    "rule": "!(self.provider in ['cloudfront', 'varnish']) || !has(self.tags) || size(self.tags) == 0",
                    "message": "cdn.tags: cloudfront and varnish have no tag purge",
                    "fieldPath": ".tags",
                },
                {
                    "rule": "self.provider != 'akamai' || !has(self.everything) || !self.everything || has(self.zone)",
                    "message": "cdn.everything with akamai needs the CP code in cdn.zone",
                    "fieldPath": ".zone",
                },
            ]
        }
    )

    provider: CdnProvider = CdnProvider.NONE
    """none, cloudflare, fastly, akamai, cloudfront, varnish or webhook."""
    credentials_secret: ObjectName | None = None
    """Secret with the provider's credentials: cloudflare `apiToken`; fastly `apiKey`; akamai
    `client_token`, `client_secret`, `access_token` (and `host` unless endpoint is set); cloudfront
    `aws_access_key_id`, `aws_secret_access_key` (and `aws_session_token`); webhook `hmacKey`."""
    zone: str | None = Field(default=None, max_length=256, pattern=r"^[A-Za-z0-9_.-]+$")
    """Cloudflare zone id, Fastly service id, CloudFront distribution id, or Akamai CP code."""
    endpoint: str | None = Field(default=None, max_length=2048, pattern=r"^https?://[^\s]+$")
    """Varnish or webhook URL; Akamai API base URL; for the others, a replacement of the public API
    base URL (a proxy or a test server)."""
    paths: list[UrlPath] = Field(default_factory=list, max_length=1000)
    """Purge exactly these paths after every promotion instead of the computed set."""
    prefixes: list[UrlPath] = Field(default_factory=list, max_length=100)
    """Purge these directory prefixes after every promotion instead of the computed set."""
    tags: list[Annotated[str, StringConstraints(pattern=r"^[^\s,]+$", max_length=1024)]] = Field(
        default_factory=list, max_length=256
    )
    """Purge these cache tags / surrogate keys after every promotion (the site must emit them)."""
    everything: bool = False
    """Purge the whole site after every promotion instead of the computed set."""
    soft: bool = True
    """Soft purge (Fastly) or invalidate (Akamai) where offered: stale copies are revalidated,
    which spares the origin at the 20:00 surge."""
    network: Literal["production", "staging"] = "production"
    """Akamai network purged."""
    scheme: Literal["https", "http"] = "https"
    """Scheme of the URLs purged (Cloudflare files, Akamai urls, Fastly URL purge)."""
    purgers: list[CIDR] = Field(default_factory=list, max_length=64)
    """Varnish: addresses allowed to PURGE and BAN (the operator's); everyone else is refused."""

    @model_validator(mode="after")
    def _provider_fields(self) -> CdnSpec:
        provider = self.provider
        if provider not in (CdnProvider.NONE, CdnProvider.VARNISH) and not self.credentials_secret:
            raise ValueError("cdn.provider needs cdn.credentialsSecret")
        needs_zone = (CdnProvider.CLOUDFLARE, CdnProvider.FASTLY, CdnProvider.CLOUDFRONT)
        if provider in needs_zone and not self.zone:
            raise ValueError(f"cdn.zone is required with cdn.provider {provider.value}")
        if provider in (CdnProvider.VARNISH, CdnProvider.WEBHOOK) and not self.endpoint:
            raise ValueError(f"cdn.endpoint is required with cdn.provider {provider.value}")
        if provider is CdnProvider.VARNISH and not self.purgers:
            raise ValueError("cdn.purgers is required with cdn.provider varnish")
        if provider in (CdnProvider.FASTLY, CdnProvider.AKAMAI) and self.prefixes:
            raise ValueError(f"cdn.prefixes: {provider.value} has no prefix purge")
        if provider in (CdnProvider.CLOUDFRONT, CdnProvider.VARNISH) and self.tags:
            raise ValueError(f"cdn.tags: {provider.value} has no tag purge")
        if provider is CdnProvider.AKAMAI and self.everything and not self.zone:
            raise ValueError("cdn.everything with akamai needs the CP code in cdn.zone")
        return self


class RetentionSpec(Model):
    """How many versions each pod keeps."""

    cuts: int = Field(default=10, ge=2, le=1000)
    """Versions kept on every pod (the active, target and pinned ones are never removed)."""


class PromotionSpec(Model):
    """How a new cut is rolled out."""

    stage_timeout_seconds: int = Field(default=120, ge=5, le=3600)
    """A pod that has not staged the cut within this time is taken out of rotation."""
    min_ready_replicas: int = Field(default=1, ge=1, le=1000)
    """Fewest pods that must stage a cut for it to be committed."""


class AutoscalingSpec(Model):
    """Horizontal autoscaling of the web pods (the HPA then owns the replica count)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.minReplicas <= self.maxReplicas",
                    "message": "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
                }
            ]
        }
    )

    enabled: bool = False
    """Create a HorizontalPodAutoscaler for the web pods."""
    min_replicas: int = Field(default=3, ge=1, le=1000)
    """Fewest web pods."""
    max_replicas: int = Field(default=10, ge=1, le=1000)
    """Most web pods."""
    target_cpu_percent: int = Field(default=60, ge=10, le=100)
    """Average CPU use the HPA aims for."""

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError("autoscaling.minReplicas must not exceed autoscaling.maxReplicas")
        return self


class Toleration(Model):
    """A toleration of the web pods (as in the Pod API)."""

    key: str | None = Field(default=None, max_length=316)
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists or Equal."""
    value: str | None = Field(default=None, max_length=63)
    """Taint value (with Equal)."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; every effect when unset."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """With NoExecute: how long the pod stays after the taint appears."""


class SchedulingSpec(Model):
    """Where the web pods run (a dedicated node pool for election night, say)."""

    node_selector: dict[str, str] = Field(default_factory=dict)
    """Node labels the web pods require."""
    tolerations: list[Toleration] = Field(default_factory=list, max_length=32)
    """Taints the web pods tolerate."""
    priority_class_name: ObjectName | None = None
    """PriorityClass of the web pods (keeps them ahead of less urgent work)."""


class WindowPhase(StrEnum):
    """Where the publication is in its window (a function of spec.window and the clock)."""

    PENDING = "Pending"
    OPEN = "Open"
    CLOSED = "Closed"
    COMPLETE = "Complete"


class WindowSpec(Model):
    """When the publication runs: a placeholder before the start, cuts until the end, then online."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.end > self.start",
                    "message": "window.end must be after window.start",
                    "fieldPath": ".end",
                }
            ]
        }
    )

    start: AwareTime
    """When the PREP starts (RFC 3339 with offset); before it the placeholder page is served."""
    end: AwareTime
    """When the PREP ends; afterwards the last cut stays served and uploads are refused."""
    keep_online: KeepOnline = "24h"
    """How long the site stays online after the end (at least 24h, as the call asks)."""
    placeholder_config_map: ObjectName
    """ConfigMap whose keys are the files served before the start (index.html, style.css ...)."""

    @model_validator(mode="after")
    def _end_after_start(self) -> WindowSpec:
        if self.end <= self.start:
            raise ValueError("window.end must be after window.start")
        return self

    def take_down_after(self) -> datetime:
        """When the site may be taken down: the end plus keepOnline."""
        return self.end + parse_duration(self.keep_online)

    def phase_at(self, now: datetime) -> WindowPhase:
        """The phase at `now` (an aware datetime): a function of the spec and the clock alone."""
        if now < self.start:
            return WindowPhase.PENDING
        if now < self.end:
            return WindowPhase.OPEN
        if now < self.take_down_after():
            return WindowPhase.CLOSED
        return WindowPhase.COMPLETE


class PrepPublicationSpec(Model):
    """Desired state of one difusor site."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.replicas >= 2 || (has(self.allowSingleReplica) && self.allowSingleReplica)",
                    "message": "replicas below 2 leave the site without a spare; set allowSingleReplica: true to accept that",
                    "fieldPath": ".replicas",
                }
            ]
        }
    )

    host: Host
    """Public host name of the site (prep.example.mx)."""
    replicas: int = Field(default=3, ge=1, le=1000)
    """Number of web pods."""
    allow_single_replica: bool = False
    """Allow replicas: 1 (drills and development only)."""
    image: str | None = Field(default=None, max_length=512)
    """Image of the web pods' containers; the operator's own image when unset."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """Per-pod content volumes."""
    tls: TLSSpec | None = None
    """HTTPS settings; plain HTTP at the edge when unset."""
    edge: EdgeSpec = Field(default_factory=EdgeSpec)
    """Ingress, Gateway or none."""
    rate_limit: RateLimitSpec = Field(default_factory=RateLimitSpec)
    """Per-client limits."""
    sftp: SftpSpec
    """SFTP endpoint."""
    ingest: IngestSpec = Field(default_factory=IngestSpec)
    """Upload handling."""
    cache: CacheSpec = Field(default_factory=CacheSpec)
    """Cache headers."""
    embedding: EmbeddingSpec = Field(default_factory=EmbeddingSpec)
    """Frame embedding."""
    statistics: StatisticsSpec = Field(default_factory=StatisticsSpec)
    """Visitor statistics from the access logs."""
    cdn: CdnSpec = Field(default_factory=CdnSpec)
    """CDN purge."""
    retention: RetentionSpec = Field(default_factory=RetentionSpec)
    """Versions kept."""
    promotion: PromotionSpec = Field(default_factory=PromotionSpec)
    """Rollout of new cuts."""
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    """Horizontal autoscaling."""
    scheduling: SchedulingSpec = Field(default_factory=SchedulingSpec)
    """Node selection, tolerations and priority of the web pods."""
    pinned_cut: CutId | None = None
    """Serve this cut instead of the newest (instant rollback); unset to follow new cuts."""
    monitoring: MonitoringSpec = Field(default_factory=lambda: MonitoringSpec())
    """Availability prober, automatic containment, Prometheus rules."""
    window: WindowSpec | None = None
    """The publication window; without one, cuts are taken and served at any time."""

    @model_validator(mode="after")
    def _replicas(self) -> PrepPublicationSpec:
        if self.replicas < 2 and not self.allow_single_replica:
            raise ValueError(
                "replicas below 2 leave the site without a spare; "
                "set allowSingleReplica: true to accept that"
            )
        return self


class Condition(Model):
    """A status condition, as in metav1.Condition."""

    type: str
    """Ready, Progressing or Degraded."""
    status: Literal["True", "False", "Unknown"]
    """Whether the condition holds."""
    reason: str
    """One CamelCase word saying why."""
    message: str = ""
    """Human-readable detail."""
    observed_generation: int | None = None
    """metadata.generation the condition was computed from."""
    last_transition_time: str
    """When status last changed (RFC 3339)."""


class ActiveCut(Model):
    """The cut that the site serves."""

    id: CutId
    """Cut id."""
    time: str | None = None
    """Cut time (RFC 3339 with offset)."""
    promoted_at: str | None = None
    """When every serving pod started serving it."""


class RolloutPhase(StrEnum):
    """Phase of the promotion of a cut."""

    IDLE = "Idle"
    STAGING = "Staging"
    COMMITTING = "Committing"
    PURGING = "Purging"


class Rollout(Model):
    """The promotion in progress, if any."""

    target_cut: CutId | None = None
    """Cut being promoted."""
    phase: RolloutPhase = RolloutPhase.IDLE
    """Idle, Staging, Committing or Purging."""
    started_at: str | None = None
    """When the promotion started."""
    committed_at: str | None = None
    """When the operator committed the cut; the commit's timeout counts from it."""
    manifest_digest: str | None = None
    """The target's manifest digest as verified (its PrepCut's spec.manifestDigest)."""
    received_by: str | None = None
    """The pod that received the target's upload, which every other pod fetches it from."""
    received_by_ip: str | None = Field(default=None, alias="receivedByIP")
    """That pod's IP as the operator last saw it: pods start fetching without a read."""


class PurgeOutcome(StrEnum):
    """How a CDN purge ended."""

    PENDING = "Pending"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SKIPPED = "Skipped"


class PublicationPurge(Model):
    """The latest CDN purge of a publication."""

    cut: CutId | None = None
    """Cut the purge was for."""
    outcome: PurgeOutcome | None = None
    """Pending, Succeeded, Failed or Skipped (a newer cut came first)."""
    message: str | None = None
    """Why it failed."""
    purged_cut: CutId | None = None
    """Newest cut whose purge succeeded: the next purge covers what changed since it."""


class WindowTransition(Model):
    """One change of window phase, kept for the report."""

    phase: WindowPhase
    """The phase entered."""
    at: str
    """When it was entered: the window's boundary (RFC 3339), or the spec change that moved it."""
    observed_at: str
    """When the operator recorded it."""


class WindowStatus(Model):
    """The publication window as the operator last saw it."""

    phase: WindowPhase
    """Pending (placeholder), Open (cuts), Closed (last cut online, uploads refused) or Complete."""
    start: str
    """Start of the window (RFC 3339)."""
    end: str
    """End of the window (RFC 3339)."""
    take_down_after: str
    """When the site may be taken down: the end plus keepOnline."""
    transitions: list[WindowTransition] = Field(default_factory=list)
    """Every phase change, oldest first."""


class PrepPublicationStatus(Model):
    """Observed state of one difusor site."""

    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Progressing, Degraded."""
    active_cut: ActiveCut | None = None
    """Cut being served."""
    rollout: Rollout | None = None
    """Promotion in progress."""
    replicas: int | None = None
    """Web pods that exist."""
    ready_replicas: int | None = None
    """Web pods that are Ready."""
    selector: str | None = None
    """Label selector of the web pods (for the scale subresource)."""
    observed_generation: int | None = None
    """metadata.generation last reconciled."""
    availability: Availability | None = None
    """The month's availability, from the prober."""
    containment: Containment | None = None
    """Automatic deny-list entries in force."""
    purge: PublicationPurge | None = None
    """The latest CDN purge."""
    window: WindowStatus | None = None
    """The publication window's phase, its take-down time and its transitions."""


class CutPhase(StrEnum):
    """Where a cut is in its life."""

    RECEIVED = "Received"
    VERIFIED = "Verified"
    REJECTED = "Rejected"
    STAGING = "Staging"
    COMMITTED = "Committed"
    PROMOTED = "Promoted"
    SUPERSEDED = "Superseded"
    FAILED = "Failed"


class PrepCutSpec(Model):
    """One package received from the institute."""

    publication: ObjectName
    """Name of the PrepPublication that received it."""
    id: CutId
    """Cut id (from the archive name, YYYYMMDD_HHMM)."""
    time: str | None = None
    """Cut time (RFC 3339 with offset)."""
    archive: str | None = Field(default=None, max_length=1024)
    """Archive file name as uploaded."""
    archive_sha256: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")] | None = None
    """SHA-256 of the archive."""
    manifest_digest: Annotated[str, StringConstraints(pattern=r"^sha256:[0-9a-f]{64}$")] | None = (
        None
    )
    """Digest over the version's manifest."""
    files: int | None = Field(default=None, ge=0)
    """Files in the version."""
    bytes: int | None = Field(default=None, ge=0)
    """Bytes in the version."""
    received_by: str | None = Field(default=None, max_length=253)
    """Pod that received the upload."""


class PodReport(Model):
    """What one web pod reported about a cut."""

    staged_at: str | None = None
    """When the pod staged the cut."""
    active_at: str | None = None
    """When the pod started serving the cut."""
    error: str | None = None
    """Why the pod could not stage it, the first reason it gave (a stagedAt as well: it did later)."""


class CutPurge(Model):
    """The CDN purge of one cut."""

    provider: str | None = None
    """CDN purged."""
    outcome: PurgeOutcome | None = None
    """Pending, Succeeded, Failed or Skipped."""
    requested_at: str | None = None
    """When the first request of the latest attempt went out."""
    completed_at: str | None = None
    """When the provider acknowledged the last request."""
    request_id: str | None = Field(default=None, max_length=1024)
    """The provider's id of the purge (the first one when it took several requests)."""
    requests: int | None = None
    """Requests the purge took."""
    items: int | None = None
    """Paths, prefixes and tags purged (1 for everything)."""
    plan: str | None = None
    """How the items were chosen."""
    attempts: int | None = None
    """Purge attempts so far."""
    next_attempt_at: str | None = None
    """When a failed purge is tried again."""
    message: str | None = None
    """Why the latest attempt failed."""


class PrepCutStatus(Model):
    """Observed state of one cut."""

    phase: CutPhase = CutPhase.RECEIVED
    """Received, Verified, Rejected, Staging, Committed, Promoted, Superseded or Failed."""
    reason: str | None = None
    """Why the cut was rejected or failed."""
    message: str | None = None
    """Human-readable detail."""
    received_at: str | None = None
    """When the upload was complete."""
    verified_at: str | None = None
    """When validation passed."""
    staging_at: str | None = None
    """When the operator first set it as every serving pod's target (each time below is set once)."""
    staged_at: str | None = None
    """When every serving pod first had it staged."""
    committed_at: str | None = None
    """When the operator first committed it."""
    serving_at: str | None = None
    """When every serving pod first served it (a rollback to the cut keeps it)."""
    pods: dict[str, PodReport] = Field(default_factory=dict)
    """Reports by pod name."""
    purge: CutPurge | None = None
    """The CDN purge after the cut went live on every pod."""


def cut_object_name(publication: str, cut_id: str) -> str:
    """Name of the PrepCut of a cut: `<publication>-<cut>` with `_` and `.` as `-`, lower case."""
    return f"{publication}-{re.sub(r'[^a-z0-9-]', '-', cut_id.lower())}"[:253].rstrip("-")


def parse_time(value: str) -> datetime:
    """An RFC 3339 timestamp as an aware datetime."""
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# --- Monitoring, availability, incidents and containment (issue 13) ---------------------------


class ProbeVia(StrEnum):
    """The path the availability prober takes to the site."""

    SERVICE = "Service"
    HOST = "Host"
    PODS = "Pods"
    URL = "Url"


class ProbeSpec(Model):
    """The operator's availability prober: what a reader would get, every few seconds."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.via != 'Url' || has(self.url)",
                    "message": "monitoring.probe.via Url needs monitoring.probe.url",
                    "fieldPath": ".url",
                }
            ]
        }
    )

    enabled: bool = True
    """Probe the site (only while it has an active cut: before the first cut nothing is due)."""
    via: ProbeVia = ProbeVia.SERVICE
    """Service (the NAME-http Service, from inside the cluster), Host (https://HOST, through the
    edge and CDN), Pods (every Ready web pod directly: where Services have no endpoints) or Url."""
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=2048)] | None = (
        None
    )
    """Base URL probed with via Url (http://edge.example:8080); the path is appended."""
    path: UrlPath = "/json/main.json"
    """Path probed: must answer 200, X-Prep-Cut equal to the active cut and a JSON body."""
    interval_seconds: int = Field(default=5, ge=1, le=300)
    """Seconds between two probes."""
    timeout_seconds: int = Field(default=3, ge=1, le=60)
    """Seconds before a probe counts as failed."""
    failures_to_open: int = Field(default=2, ge=1, le=100)
    """Failed probes in a row that open an incident."""
    successes_to_close: int = Field(default=3, ge=1, le=100)
    """Successful probes in a row that close it."""

    @model_validator(mode="after")
    def _url(self) -> ProbeSpec:
        if self.via is ProbeVia.URL and not self.url:
            raise ValueError("monitoring.probe.via Url needs monitoring.probe.url")
        return self


class AutoDenySpec(Model):
    """Containment: ranges that the attack detector flags are denied on every pod for a while."""

    enabled: bool = True
    """Apply the detector's deny list automatically (the spec's own denyList always applies)."""
    ttl_seconds: int = Field(default=900, ge=10, le=86400)
    """How long an automatic entry stays (renewed while the range keeps attacking)."""
    max_entries: int = Field(default=256, ge=1, le=1024)
    """Most automatic entries at once (the oldest go first)."""
    prefix_length_v4: int = Field(default=24, ge=8, le=32)
    """IPv4 ranges are judged and denied by this prefix (24: a /24)."""
    prefix_length_v6: int = Field(default=48, ge=16, le=128)
    """IPv6 ranges are judged and denied by this prefix."""
    min_requests_per_minute: int = Field(default=600, ge=10, le=10000000)
    """A pod's minute with fewer requests never signals an attack."""


class MonitoringSpec(Model):
    """Metrics, alerts, the availability prober and automatic containment."""

    probe: ProbeSpec = Field(default_factory=ProbeSpec)
    """The availability prober."""
    auto_deny: AutoDenySpec = Field(default_factory=AutoDenySpec)
    """Automatic deny list from the attack detector."""
    cut_cadence_minutes: int = Field(default=20, ge=1, le=1440)
    """How often the institute publishes a cut (alert CutStale fires after cadence + grace)."""
    cut_grace_minutes: int = Field(default=10, ge=0, le=1440)
    """Grace after the cadence before the active cut counts as stale."""
    integrity_check_files_per_minute: int = Field(default=600, ge=0, le=1000000)
    """Served files each agent re-hashes per minute against the cut's manifest (0: off)."""
    prometheus_rules: bool = True
    """Create a PodMonitor and a PrometheusRule when the cluster serves monitoring.coreos.com/v1."""
    rule_labels: dict[str, str] = Field(default_factory=dict)
    """Extra labels of the PodMonitor and PrometheusRule (your Prometheus' selectors)."""


class IncidentCause(StrEnum):
    """Probable root cause of an incident."""

    PODS_NOT_READY = "PodsNotReady"
    PROMOTION_STUCK = "PromotionStuck"
    EDGE = "Edge"
    CDN = "CDN"
    ATTACK = "Attack"
    INGEST = "Ingest"
    CONTENT = "Content"
    UNKNOWN = "Unknown"


class IncidentPhase(StrEnum):
    """Whether an incident is still going on."""

    OPEN = "Open"
    RESOLVED = "Resolved"


class IncidentAction(Model):
    """One thing the operator (or an agent) did about an incident."""

    at: str
    """When (RFC 3339)."""
    action: str
    """What was done, in the past tense (`Denied 203.0.113.0/24 on every pod until ...`)."""


class IncidentImpact(Model):
    """What readers saw."""

    failed_probes: int = 0
    """Probes that failed while the incident was open."""
    total_probes: int = 0
    """Probes while the incident was open."""
    affected_pods: list[str] = Field(default_factory=list)
    """Web pods involved (not ready, excluded from a commit, corrupt, under attack)."""
    denied_ranges: list[str] = Field(default_factory=list)
    """Ranges denied by the containment of an attack."""
    peak_requests_per_minute: int | None = None
    """Attack: most requests one pod saw in a minute."""
    rejected_share: float | None = None
    """Attack: share of 429/403 answers in that minute."""


class PrepIncidentSpec(Model):
    """When and how an incident was detected (set once, when it opens)."""

    publication: ObjectName
    """Name of the PrepPublication."""
    started_at: str
    """When it started (the first failed probe, the stage timeout, the attack minute)."""
    detected_by: Literal["Prober", "Promotion", "AttackDetector", "ContentCheck"]
    """What noticed it."""


class PrepIncidentStatus(Model):
    """The incident as it stands: cause, impact, mitigation and, once over, its end."""

    phase: IncidentPhase = IncidentPhase.OPEN
    """Open or Resolved."""
    cause: IncidentCause = IncidentCause.UNKNOWN
    """Probable root cause: PodsNotReady, PromotionStuck, Edge, CDN, Attack, Ingest, Content."""
    root_cause: str = ""
    """The evidence behind the cause, in a sentence."""
    ended_at: str | None = None
    """When it ended."""
    duration_seconds: int | None = None
    """endedAt minus startedAt."""
    impact: IncidentImpact = Field(default_factory=IncidentImpact)
    """What readers saw."""
    actions: list[IncidentAction] = Field(default_factory=list)
    """Mitigation: what was done, in order."""


class Availability(Model):
    """The month's availability as the prober measured it."""

    month: str
    """Calendar month (UTC), YYYY-MM."""
    probes: int = 0
    """Probes this month."""
    failed_probes: int = 0
    """Probes that failed this month."""
    ratio: float | None = None
    """Successful probes over probes (the institute asks for >= 0.999)."""
    last_probe_at: str | None = None
    """When the last probe ran."""
    last_error: str | None = None
    """Why the last failed probe failed."""
    open_incidents: list[str] = Field(default_factory=list)
    """Names of the PrepIncidents still open."""


class DenyEntry(Model):
    """A range denied on every pod by the operator, until it expires."""

    # The operator writes it from ranges it parsed: no CEL rule (a rule per item of a long status
    # list is over the API server's cost budget).
    cidr: Annotated[
        str, StringConstraints(min_length=2, max_length=43), AfterValidator(_check_cidr)
    ]
    """The range."""
    since: str
    """When it was first denied."""
    expires_at: str
    """When the entry goes (renewed while the range keeps attacking)."""
    reason: str = ""
    """The detector's evidence (`rejected-share 0.97 on web-0, 12000 requests/min`)."""


class Containment(Model):
    """Automatic containment in force."""

    denied: list[DenyEntry] = Field(default_factory=list, max_length=1024)
    """Automatic deny-list entries (spec.rateLimit.denyList is applied besides these)."""


def incident_object_name(publication: str, started_at: datetime, detected_by: str) -> str:
    """Name of a PrepIncident: `<publication>-<yyyymmdd-hhmmss>-<detector>`, lower case."""
    stamp = started_at.strftime("%Y%m%d-%H%M%S")
    return f"{publication}-{stamp}-{detected_by.lower()}"[:253].rstrip("-")
