"""Every child object of a PrepPublication, rendered as plain dicts from the spec alone."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from difusor.models import (
    CdnProvider,
    ClientAddressHeader,
    EdgeKind,
    PrepPublicationSpec,
    SftpServiceType,
)
from difusor.render.labels import (
    CONFIG_HASH_ANNOTATION,
    GENERATED_ANNOTATION,
    Names,
    common_labels,
    owner_reference,
    selector_labels,
)
from difusor.render.monitoring import MONITORING, pod_monitor, prometheus_rule
from difusor.render.nginx import PLACEHOLDER_DIR
from difusor.render.varnish import VCL_FILE, render_vcl

Obj = dict[str, Any]

#: Ports inside a web pod.
HTTP_PORT = 8080
AGENT_PORT = 8081
SFTP_PORT = 2222
#: Where the content volume, the configuration and the secrets are mounted in a web pod.
CONTENT_DIR = "/srv/prep"
LOG_DIR = "/var/log/difusor"
CONFIG_DIR = "/etc/difusor/config"
HOST_KEYS_DIR = "/etc/difusor/host-keys"
AUTHORIZED_KEYS_DIR = "/etc/difusor/authorized-keys"
AGENT_TOKEN_DIR = "/etc/difusor/agent-token"
#: The unprivileged user of every container (matches the image's user).
RUN_AS_USER = 10001

#: API groups whose presence changes what is rendered (gathered from discovery by the operator).
TRAEFIK = "traefik.io/v1alpha1"
GATEWAY = "gateway.networking.k8s.io/v1"
CERT_MANAGER = "cert-manager.io/v1"


@dataclass(frozen=True)
class Target:
    """The publication being rendered: identity plus what the operator knows of the cluster."""

    name: str
    namespace: str
    uid: str | None = None
    image: str = "ghcr.io/difusor/difusor:0.1.0"
    nginx_image: str = "ghcr.io/difusor/difusor-nginx:0.1.0"
    capabilities: frozenset[str] = field(default_factory=frozenset)
    files: dict[str, str] = field(default_factory=dict)
    """Rendered configuration files (nginx.conf, sshd_config) that go into the ConfigMap."""


def render_all(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """Every child object, in the order they are applied (config and identity before workloads)."""
    objects: list[Obj] = [
        service_account(target),
        agent_role(spec, target),
        agent_role_binding(target),
        config_map(target),
        headless_service(target),
        http_service(target),
        sftp_service(spec, target),
        stateful_set(spec, target),
        pod_disruption_budget(spec, target),
        *network_policies(spec, target),
        *edge_objects(spec, target),
        *monitoring_objects(spec, target),
    ]
    if spec.autoscaling.enabled:
        objects.append(autoscaler(spec, target))
    if spec.cdn.provider is CdnProvider.VARNISH:
        objects.append(varnish_config_map(spec, target))
    return objects


def varnish_config_map(spec: PrepPublicationSpec, target: Target) -> Obj:
    """The VCL of the optional Varnish cache tier, in front of the readers' Service."""
    names = Names(target.name)
    backend = (f"{names.http}.{target.namespace}.svc", 80)
    vcl = render_vcl(spec, backends=[backend], purgers=spec.cdn.purgers)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(target, names.varnish, component="cache"),
        "data": {VCL_FILE: vcl},
    }


def managed_kinds() -> list[tuple[str, str]]:
    """(apiVersion, kind) of every child type the operator may create, for pruning and RBAC."""
    return [
        ("v1", "ServiceAccount"),
        ("rbac.authorization.k8s.io/v1", "Role"),
        ("rbac.authorization.k8s.io/v1", "RoleBinding"),
        ("v1", "ConfigMap"),
        ("v1", "Service"),
        ("apps/v1", "StatefulSet"),
        ("policy/v1", "PodDisruptionBudget"),
        ("networking.k8s.io/v1", "NetworkPolicy"),
        ("networking.k8s.io/v1", "Ingress"),
        (GATEWAY, "HTTPRoute"),
        (TRAEFIK, "Middleware"),
        ("autoscaling/v2", "HorizontalPodAutoscaler"),
        (MONITORING, "PodMonitor"),
        (MONITORING, "PrometheusRule"),
    ]


def monitoring_objects(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """PodMonitor and PrometheusRule, only where the cluster serves monitoring.coreos.com/v1."""
    if MONITORING not in target.capabilities or not spec.monitoring.prometheus_rules:
        return []
    objects = [
        pod_monitor(spec, name=target.name, namespace=target.namespace),
        prometheus_rule(spec, name=target.name, namespace=target.namespace),
    ]
    for obj in objects:
        labels = obj["metadata"]["labels"]
        obj["metadata"] = child_meta(target, obj["metadata"]["name"], component="monitoring")
        obj["metadata"]["labels"] = labels
    return objects


def child_meta(target: Target, name: str, *, component: str = "web", **extra: Any) -> Obj:
    """metadata of a child: name, namespace, labels and, once the uid is known, its owner."""
    meta: Obj = {
        "name": name,
        "namespace": target.namespace,
        "labels": common_labels(target.name, component=component),
    }
    if target.uid:
        meta["ownerReferences"] = [owner_reference(target.name, target.uid)]
    meta.update(extra)
    return meta


def service_account(target: Target) -> Obj:
    """The web pods' identity (only the agent uses its token)."""
    names = Names(target.name)
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": child_meta(target, names.agent),
    }


def agent_pod_names(spec: PrepPublicationSpec, target: Target) -> list[str]:
    """Every pod name the agents may have (the most the StatefulSet can reach)."""
    most = max(spec.replicas, spec.autoscaling.max_replicas if spec.autoscaling.enabled else 0)
    names = Names(target.name)
    return [names.pod(i) for i in range(most)]


def agent_role(spec: PrepPublicationSpec, target: Target) -> Obj:
    """Least privilege for the agents: read their publication, report on their own pods, record cuts."""
    names = Names(target.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": child_meta(target, names.agent),
        "rules": [
            {
                "apiGroups": ["prep.difusor.io"],
                "resources": ["preppublications"],
                "resourceNames": [target.name],
                "verbs": ["get", "watch", "list"],
            },
            {
                "apiGroups": ["prep.difusor.io"],
                "resources": ["prepcuts"],
                "verbs": ["get", "list", "watch", "create"],
            },
            {
                "apiGroups": ["prep.difusor.io"],
                "resources": ["prepcuts/status"],
                "verbs": ["get", "patch", "update"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {
                "apiGroups": [""],
                "resources": ["pods"],
                "resourceNames": agent_pod_names(spec, target),
                "verbs": ["patch"],
            },
            {
                "apiGroups": ["", "events.k8s.io"],
                "resources": ["events"],
                "verbs": ["create", "patch"],
            },
            # Visitor statistics: one ConfigMap per pod and hour (agent.stats).
            {
                "apiGroups": [""],
                "resources": ["configmaps"],
                "verbs": ["get", "list", "create", "patch"],
            },
        ],
    }


def agent_role_binding(target: Target) -> Obj:
    """Binds the agents' Role to the web pods' ServiceAccount."""
    names = Names(target.name)
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": child_meta(target, names.agent),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": names.agent},
        "subjects": [
            {"kind": "ServiceAccount", "name": names.agent, "namespace": target.namespace}
        ],
    }


def config_hash(files: dict[str, str]) -> str:
    """A short digest of the rendered configuration files (a change rolls the pods)."""
    digest = hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()
    return digest[:16]


def config_map(target: Target) -> Obj:
    """nginx.conf, sshd_config and the rest of the rendered configuration."""
    names = Names(target.name)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_meta(target, names.config),
        "data": dict(sorted(target.files.items())),
    }


def host_keys_owners(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """The ownerReferences of the SFTP host-keys Secret: none while the volumes are kept on
    delete (`storage.retainOnDelete`, the default), so that the publication applied again under
    its name is the same host to the uploader's known_hosts; the publication otherwise, and the
    keys go with it as the volumes do."""
    if spec.storage.retain_on_delete or not target.uid:
        return []
    return [owner_reference(target.name, target.uid)]


def secret_placeholders(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """The Secrets the operator generates once and keeps (shown by `render` without their data)."""
    names = Names(target.name)
    note = "generated once by the operator and kept; data not shown"
    host_keys = child_meta(target, names.host_keys, annotations={GENERATED_ANNOTATION: note})
    host_keys.pop("ownerReferences", None)
    if owners := host_keys_owners(spec, target):
        host_keys["ownerReferences"] = owners
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": host_keys, "type": "Opaque"},
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": child_meta(
                target, names.agent_token, annotations={GENERATED_ANNOTATION: note}
            ),
            "type": "Opaque",
        },
    ]


def headless_service(target: Target) -> Obj:
    """Stable DNS for each web pod; agents reach their peers through it, ready or not."""
    names = Names(target.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(target, names.headless),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(target.name),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http"},
                {"name": "agent", "port": AGENT_PORT, "targetPort": "agent"},
            ],
        },
    }


def http_service(target: Target) -> Obj:
    """The readers' Service: only Ready pods, which serve the active cut."""
    names = Names(target.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_meta(target, names.http),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(target.name),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }


def sftp_service(spec: PrepPublicationSpec, target: Target) -> Obj:
    """The institute's SFTP endpoint; ClientIP affinity keeps an archive and its checksum together."""
    names = Names(target.name)
    svc = spec.sftp.service
    port: Obj = {"name": "sftp", "port": svc.port, "targetPort": "sftp", "protocol": "TCP"}
    if svc.node_port is not None and svc.type is not SftpServiceType.CLUSTER_IP:
        port["nodePort"] = svc.node_port
    body: Obj = {
        "type": svc.type.value,
        "selector": selector_labels(target.name),
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 3600}},
        # A web pod is Ready only once it serves an active cut, and the first cut comes through
        # this Service: it must reach pods that are not Ready yet (the sftp container's own
        # probes keep a dead sshd out of rotation through restarts all the same).
        "publishNotReadyAddresses": True,
        "ports": [port],
    }
    if svc.type is not SftpServiceType.CLUSTER_IP:
        # Local keeps the uploader's source address, which the source ranges are checked against.
        body["externalTrafficPolicy"] = "Local"
    if svc.type is SftpServiceType.LOAD_BALANCER and spec.sftp.allowed_source_ranges:
        body["loadBalancerSourceRanges"] = list(spec.sftp.allowed_source_ranges)
    meta = child_meta(target, names.sftp)
    if svc.annotations:
        meta["annotations"] = dict(svc.annotations)
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": body}


def _container_security() -> Obj:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_USER,
        "runAsGroup": RUN_AS_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _env(target: Target) -> list[Obj]:
    def field_ref(path: str) -> Obj:
        return {"valueFrom": {"fieldRef": {"fieldPath": path}}}

    return [
        {"name": "DIFUSOR_PUBLICATION", "value": target.name},
        {"name": "DIFUSOR_POD_NAME", **field_ref("metadata.name")},
        {"name": "DIFUSOR_NAMESPACE", **field_ref("metadata.namespace")},
        {"name": "DIFUSOR_POD_IP", **field_ref("status.podIP")},
        {"name": "DIFUSOR_CONTENT_DIR", "value": CONTENT_DIR},
        {"name": "DIFUSOR_CONFIG_DIR", "value": CONFIG_DIR},
    ]


def _startup_probe(handler: Obj) -> Obj:
    """Up to three minutes to start before liveness counts: a Python process importing the
    Kubernetes client on a busy node takes longer than liveness allows."""
    return {**handler, "periodSeconds": 2, "failureThreshold": 90}


def _probe(path: str, port: str, *, period: int, failures: int) -> Obj:
    return {
        "httpGet": {"path": path, "port": port},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def pod_template(spec: PrepPublicationSpec, target: Target) -> Obj:
    """The web pod: nginx serving `current`, the agent that ingests and promotes, and sshd."""
    names = Names(target.name)
    image = spec.image or target.image
    tmp = {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
    content_mount = {"name": "content", "mountPath": CONTENT_DIR}
    config_mount = {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}
    tmp_mount = {"name": "tmp", "mountPath": "/tmp"}
    nginx = {
        "name": "nginx",
        "image": target.nginx_image,
        "command": ["nginx", "-e", "stderr", "-c", f"{CONFIG_DIR}/nginx.conf", "-g", "daemon off;"],
        "ports": [{"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/readyz", "http", period=2, failures=2),
        "livenessProbe": _probe("/healthz", "http", period=10, failures=3),
        "lifecycle": {"preStop": {"sleep": {"seconds": 5}}},
        "resources": {
            "requests": {"cpu": "250m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            {**content_mount, "readOnly": True},
            {"name": "content", "mountPath": LOG_DIR, "subPath": "logs"},
            config_mount,
            tmp_mount,
            *_placeholder_mounts(spec),
        ],
    }
    agent = {
        "name": "agent",
        "image": image,
        "args": ["agent"],
        # The agent signals nginx (shared /tmp pid file): SIGHUP to reload the deny list,
        # SIGUSR1 to reopen the access log it rotated.
        "env": [*_env(target), {"name": "DIFUSOR_NGINX_PID_FILE", "value": "/tmp/nginx.pid"}],
        "ports": [{"name": "agent", "containerPort": AGENT_PORT, "protocol": "TCP"}],
        "startupProbe": _startup_probe({"httpGet": {"path": "/healthz", "port": "agent"}}),
        "readinessProbe": _probe("/readyz", "agent", period=2, failures=2),
        "livenessProbe": _probe("/healthz", "agent", period=10, failures=3),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "1Gi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            content_mount,
            config_mount,
            tmp_mount,
            {"name": "agent-token", "mountPath": AGENT_TOKEN_DIR, "readOnly": True},
        ],
    }
    sftp = {
        "name": "sftp",
        "image": image,
        "args": ["sftp-server"],
        "env": _env(target),
        "ports": [{"name": "sftp", "containerPort": SFTP_PORT, "protocol": "TCP"}],
        "startupProbe": _startup_probe({"tcpSocket": {"port": "sftp"}}),
        "readinessProbe": {"tcpSocket": {"port": "sftp"}, "periodSeconds": 5},
        "livenessProbe": {"tcpSocket": {"port": "sftp"}, "periodSeconds": 10},
        "resources": {
            "requests": {"cpu": "100m", "memory": "64Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [
            content_mount,
            config_mount,
            tmp_mount,
            {"name": "host-keys", "mountPath": HOST_KEYS_DIR, "readOnly": True},
            {"name": "authorized-keys", "mountPath": AUTHORIZED_KEYS_DIR, "readOnly": True},
        ],
    }
    selector = selector_labels(target.name)
    return {
        "metadata": {
            "labels": {**common_labels(target.name)},
            "annotations": {CONFIG_HASH_ANNOTATION: config_hash(target.files)},
        },
        "spec": {
            "serviceAccountName": names.agent,
            "enableServiceLinks": False,
            # The agent signals nginx: reload for the deny list, reopen of the rotated access log.
            "shareProcessNamespace": True,
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": RUN_AS_USER,
                "runAsGroup": RUN_AS_USER,
                "fsGroup": RUN_AS_USER,
                "fsGroupChangePolicy": "OnRootMismatch",
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "kubernetes.io/hostname",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": selector},
                },
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": selector},
                },
            ],
            "containers": [nginx, agent, sftp],
            **_scheduling(spec),
            "volumes": [
                {"name": "config", "configMap": {"name": names.config}},
                tmp,
                {
                    "name": "host-keys",
                    "secret": {"secretName": names.host_keys, "defaultMode": 0o440},
                },
                {
                    "name": "authorized-keys",
                    "secret": {
                        "secretName": spec.sftp.authorized_keys_secret,
                        "defaultMode": 0o440,
                    },
                },
                {
                    "name": "agent-token",
                    "secret": {"secretName": names.agent_token, "defaultMode": 0o440},
                },
                *_placeholder_volumes(spec),
            ],
        },
    }


def _placeholder_mounts(spec: PrepPublicationSpec) -> list[Obj]:
    if spec.window is None:
        return []
    return [{"name": "placeholder", "mountPath": PLACEHOLDER_DIR, "readOnly": True}]


def _placeholder_volumes(spec: PrepPublicationSpec) -> list[Obj]:
    """The publication's placeholder ConfigMap; optional, so a missing one never blocks a pod."""
    if spec.window is None:
        return []
    source = {"name": spec.window.placeholder_config_map, "optional": True}
    return [{"name": "placeholder", "configMap": source}]


def _scheduling(spec: PrepPublicationSpec) -> Obj:
    sched = spec.scheduling
    out: Obj = {}
    if sched.node_selector:
        out["nodeSelector"] = dict(sched.node_selector)
    if sched.tolerations:
        out["tolerations"] = [t.wire() for t in sched.tolerations]
    if sched.priority_class_name:
        out["priorityClassName"] = sched.priority_class_name
    return out


def stateful_set(spec: PrepPublicationSpec, target: Target) -> Obj:
    """The web pods, each with its own content volume."""
    names = Names(target.name)
    retain = "Retain" if spec.storage.retain_on_delete else "Delete"
    claim: Obj = {
        "metadata": {"name": "content", "labels": common_labels(target.name)},
        "spec": {
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": spec.storage.size}},
        },
    }
    if spec.storage.storage_class_name:
        claim["spec"]["storageClassName"] = spec.storage.storage_class_name
    body: Obj = {
        "serviceName": names.headless,
        "podManagementPolicy": "Parallel",
        "selector": {"matchLabels": selector_labels(target.name)},
        "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        "persistentVolumeClaimRetentionPolicy": {"whenDeleted": retain, "whenScaled": "Retain"},
        "template": pod_template(spec, target),
        "volumeClaimTemplates": [claim],
    }
    if not spec.autoscaling.enabled:
        # Under autoscaling the HPA owns the replica count: leaving the field out of the applied
        # configuration gives up ownership instead of fighting the HPA.
        body = {"replicas": spec.replicas, **body}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": child_meta(target, names.web),
        "spec": body,
    }


def pod_disruption_budget(spec: PrepPublicationSpec, target: Target) -> Obj:
    """At most one web pod voluntarily down at a time."""
    names = Names(target.name)
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": child_meta(target, names.web),
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": selector_labels(target.name)},
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }


def network_policies(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """Web port open; SFTP only from the allowed ranges; the agent port to peers and scrapers."""
    names = Names(target.name)
    selector = {"matchLabels": selector_labels(target.name)}
    sftp_from: list[Obj] = [{"ipBlock": {"cidr": cidr}} for cidr in spec.sftp.allowed_source_ranges]
    sftp_rule: Obj = {"ports": [{"protocol": "TCP", "port": SFTP_PORT}]}
    if sftp_from:
        sftp_rule["from"] = sftp_from
    return [
        {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": child_meta(target, names.web),
            "spec": {
                "podSelector": selector,
                "policyTypes": ["Ingress"],
                "ingress": [
                    {"ports": [{"protocol": "TCP", "port": HTTP_PORT}]},
                    sftp_rule,
                    # Peers fetch versions here (with the agent token) and Prometheus, from
                    # any namespace, scrapes /metrics.
                    {
                        "from": [{"podSelector": selector}, {"namespaceSelector": {}}],
                        "ports": [{"protocol": "TCP", "port": AGENT_PORT}],
                    },
                ],
            },
        }
    ]


def _edge_annotations(spec: PrepPublicationSpec, target: Target) -> dict[str, str]:
    rate = spec.rate_limit
    names = Names(target.name)
    notes: dict[str, str] = {}
    class_name = (spec.edge.class_name or "").lower()
    if "nginx" in class_name:
        burst_multiplier = max(
            1, -(-(rate.requests_per_second + rate.burst) // rate.requests_per_second)
        )
        notes.update(
            {
                "nginx.ingress.kubernetes.io/limit-rps": str(rate.requests_per_second),
                "nginx.ingress.kubernetes.io/limit-burst-multiplier": str(burst_multiplier),
                "nginx.ingress.kubernetes.io/limit-connections": str(rate.connections),
            }
        )
    if "traefik" in class_name and TRAEFIK in target.capabilities:
        notes["traefik.ingress.kubernetes.io/router.middlewares"] = (
            f"{target.namespace}-{names.ratelimit}@kubernetescrd"
        )
    if spec.tls and spec.tls.issuer_ref:
        key = (
            "cert-manager.io/cluster-issuer"
            if spec.tls.issuer_ref.kind == "ClusterIssuer"
            else "cert-manager.io/issuer"
        )
        notes[key] = spec.tls.issuer_ref.name
    notes.update(spec.edge.annotations)
    return notes


def _tls_secret(spec: PrepPublicationSpec, target: Target) -> str | None:
    if spec.tls is None:
        return None
    return spec.tls.secret_name or Names(target.name).tls


def edge_objects(spec: PrepPublicationSpec, target: Target) -> list[Obj]:
    """The Ingress (with a Traefik Middleware where Traefik exists), an HTTPRoute, or nothing."""
    names = Names(target.name)
    backend = {"service": {"name": names.http, "port": {"name": "http"}}}
    if spec.edge.kind is EdgeKind.INGRESS:
        body: Obj = {
            "rules": [
                {
                    "host": spec.host,
                    "http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]},
                }
            ]
        }
        if spec.edge.class_name:
            body = {"ingressClassName": spec.edge.class_name, **body}
        secret = _tls_secret(spec, target)
        if secret:
            body["tls"] = [{"hosts": [spec.host], "secretName": secret}]
        meta = child_meta(target, target.name, component="edge")
        annotations = _edge_annotations(spec, target)
        if annotations:
            meta["annotations"] = annotations
        objects: list[Obj] = [
            {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "metadata": meta,
                "spec": body,
            }
        ]
        if "traefik" in (spec.edge.class_name or "").lower() and TRAEFIK in target.capabilities:
            objects.append(traefik_middleware(spec, target))
        return objects
    if spec.edge.kind is EdgeKind.GATEWAY:
        meta = child_meta(target, target.name, component="edge")
        if spec.edge.annotations:
            meta["annotations"] = dict(spec.edge.annotations)
        return [
            {
                "apiVersion": GATEWAY,
                "kind": "HTTPRoute",
                "metadata": meta,
                "spec": {
                    "parentRefs": [ref.wire() for ref in spec.edge.parent_refs],
                    "hostnames": [spec.host],
                    "rules": [
                        {
                            "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                            "backendRefs": [{"name": names.http, "port": 80}],
                        }
                    ],
                },
            }
        ]
    return []


def traefik_middleware(spec: PrepPublicationSpec, target: Target) -> Obj:
    """Traefik's per-client rate limit, keyed on the same client address as nginx's."""
    names = Names(target.name)
    rate = spec.rate_limit
    limit: Obj = {"average": rate.requests_per_second, "burst": max(1, rate.burst), "period": "1s"}
    if rate.trusted_proxies:
        if rate.client_address_header is ClientAddressHeader.X_FORWARDED_FOR:
            limit["sourceCriterion"] = {"ipStrategy": {"depth": 1}}
        else:
            limit["sourceCriterion"] = {"requestHeaderName": rate.client_address_header.value}
    return {
        "apiVersion": TRAEFIK,
        "kind": "Middleware",
        "metadata": child_meta(target, names.ratelimit, component="edge"),
        "spec": {"rateLimit": limit},
    }


def autoscaler(spec: PrepPublicationSpec, target: Target) -> Obj:
    """CPU-based autoscaling of the web pods."""
    names = Names(target.name)
    auto = spec.autoscaling
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_meta(target, names.web),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": names.web},
            "minReplicas": auto.min_replicas,
            "maxReplicas": auto.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": auto.target_cpu_percent,
                        },
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 900}},
        },
    }
