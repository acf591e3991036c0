"""The fixed labels, annotations and object names that every part of difusor agrees on."""

from __future__ import annotations

from typing import Any

from difusor.models import API_VERSION, GROUP

NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
PUBLICATION_LABEL = f"{GROUP}/publication"

STAGED_ANNOTATION = f"{GROUP}/staged"
ACTIVE_ANNOTATION = f"{GROUP}/active"
#: Why a pod could not stage the rollout's target: "<cut>: <reason>" (the PrepCut's
#: status.pods.<pod>.error, and the StageTimeout Event, carry the reason).
STAGE_ERROR_ANNOTATION = f"{GROUP}/stage-error"
#: What a pod's agent sees of an attack (JSON: minute, reasons, requests, ranges it blames).
ATTACK_ANNOTATION = f"{GROUP}/attack"
CONFIG_HASH_ANNOTATION = f"{GROUP}/config-hash"
GENERATED_ANNOTATION = f"{GROUP}/generated"

#: Visitor statistics: ConfigMaps of component `statistics`, one per pod and hour (agent.stats).
STATS_COMPONENT = "statistics"
STATS_POD_LABEL = f"{GROUP}/pod"
STATS_HOUR_LABEL = f"{GROUP}/hour"

FIELD_MANAGER = "difusor"
FINALIZER = f"{GROUP}/finalizer"


def owner_reference(publication: str, uid: str, *, controller: bool = True) -> dict[str, Any]:
    """A reference to the owning PrepPublication (garbage collection deletes with it).

    The operator's children name it their controller and block its deletion until they are gone;
    the agents' PrepCuts do neither (the agents may not update the publication's finalizers).
    """
    ref: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "PrepPublication",
        "name": publication,
        "uid": uid,
    }
    if controller:
        ref.update(controller=True, blockOwnerDeletion=True)
    return ref


def selector_labels(publication: str) -> dict[str, str]:
    """Labels that select the web pods of a publication (immutable once a StatefulSet exists)."""
    return {
        NAME_LABEL: "difusor",
        INSTANCE_LABEL: publication,
        COMPONENT_LABEL: "web",
    }


def common_labels(publication: str, *, component: str = "web") -> dict[str, str]:
    """Labels on every object the operator makes for a publication."""
    return {
        NAME_LABEL: "difusor",
        INSTANCE_LABEL: publication,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: "difusor",
    }


def selector_string(publication: str) -> str:
    """The web pods' selector in `kubectl -l` form (status.selector, for the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in selector_labels(publication).items())


class Names:
    """Object names derived from a publication's name."""

    def __init__(self, publication: str) -> None:
        self.publication = publication
        self.web = f"{publication}-web"
        self.headless = f"{publication}-web"
        self.http = f"{publication}-http"
        self.sftp = f"{publication}-sftp"
        self.config = f"{publication}-config"
        self.host_keys = f"{publication}-sftp-host-keys"
        self.agent_token = f"{publication}-agent-token"
        self.agent = f"{publication}-agent"
        self.tls = f"{publication}-tls"
        self.ratelimit = f"{publication}-ratelimit"
        self.varnish = f"{publication}-varnish"

    def pod(self, ordinal: int) -> str:
        """Name of the web pod with this ordinal."""
        return f"{self.web}-{ordinal}"
