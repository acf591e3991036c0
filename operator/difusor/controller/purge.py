"""The purge step of a promotion: gather the manifests and credentials, plan, send, record.

Runs when decide() asks (every serving pod serves the cut). The manifests come from the agents
(the same endpoint peers copy versions from), the credentials from the Secret that
spec.cdn.credentialsSecret names; neither is ever logged or written to status or Events.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client as k8s

from difusor.cdn.client import PurgeError, scrub
from difusor.cdn.providers import Result, Site, purge
from difusor.kube import core_path, read
from difusor.logic.archive import manifest_entries
from difusor.logic.purge import CAPS, Backoff, Configured, Manifest, Plan, attempt_delay, plan_purge
from difusor.models import PrepPublicationSpec
from difusor.render.children import AGENT_PORT
from difusor.render.labels import Names

log = logging.getLogger(__name__)

Obj = dict[str, Any]
MANIFEST_TIMEOUT = 30.0


@dataclass(frozen=True)
class PodAddress:
    """A web pod the operator may ask for a manifest."""

    name: str
    ip: str


@dataclass(frozen=True)
class Outcome:
    """How one purge attempt went."""

    ok: bool
    requested_at: datetime
    completed_at: datetime | None
    plan: Plan | None = None
    result: Result | None = None
    message: str | None = None
    next_attempt_at: datetime | None = None


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _fetch_manifest(pod: PodAddress, cut: str, token: str) -> Obj:
    conn = http.client.HTTPConnection(pod.ip, AGENT_PORT, timeout=MANIFEST_TIMEOUT)
    try:
        conn.request(
            "GET", f"/v1/versions/{cut}/manifest", headers={"Authorization": f"Bearer {token}"}
        )
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    if resp.status != 200:
        raise OSError(f"pod {pod.name} answered {resp.status} for the manifest of {cut}")
    document: Obj = json.loads(body)["manifest"]
    return document


def manifest_of(
    cut: str, *, pods: Iterable[PodAddress], token: str, digest: str | None
) -> Manifest | None:
    """path -> sha256 of a cut, from the first pod that has a manifest that verifies; else None."""
    for pod in pods:
        try:
            document = _fetch_manifest(pod, cut, token)
            entries = manifest_entries(document)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.info("Could not read the manifest of cut %s from pod %s: %s", cut, pod.name, exc)
            continue
        if digest and document.get("digest") != digest:
            log.warning("Pod %s holds cut %s with another digest than verified", pod.name, cut)
            continue
        return {e.path: e.sha256 for e in entries}
    return None


def _secret_data(api: k8s.ApiClient, namespace: str, name: str | None) -> dict[str, str]:
    if not name:
        return {}
    try:
        secret = read(api, core_path(namespace, "secrets", name))
    except k8s.ApiException as exc:
        raise PurgeError(f"could not read Secret {name}: {exc.reason}") from None
    if secret is None:
        raise PurgeError(f"Secret {name} (cdn.credentialsSecret) does not exist")
    return {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}


class Purger:
    """Carries out one purge attempt for a promotion."""

    def __init__(self, api: k8s.ApiClient, policy: Backoff | None = None) -> None:
        self.api = api
        self.policy = policy or Backoff()

    def run(
        self,
        *,
        namespace: str,
        publication: str,
        spec: PrepPublicationSpec,
        cut: str,
        cuts: Mapping[str, Obj],
        purged_cut: str | None,
        pods: list[PodAddress],
        attempts: int,
    ) -> Outcome:
        """One attempt: plan from the manifests, send, and say how it went (never raises)."""
        requested = datetime.now(UTC)
        cdn = spec.cdn
        secrets: dict[str, str] = {}
        try:
            secrets = _secret_data(self.api, namespace, cdn.credentials_secret)
            plan = self._plan(
                namespace=namespace, publication=publication, spec=spec, cut=cut,
                cuts=cuts, purged_cut=purged_cut, pods=pods,
            )  # fmt: skip
            site = Site(
                provider=cdn.provider.value, host=spec.host, namespace=namespace,
                publication=publication, cut=cut, zone=cdn.zone, endpoint=cdn.endpoint,
                soft=cdn.soft, network=cdn.network, scheme=cdn.scheme,
            )  # fmt: skip
            requested = datetime.now(UTC)
            result = asyncio.run(purge(site, plan, secrets, policy=self.policy))
        except PurgeError as exc:
            retry_after = exc.retry_after
            message = scrub(str(exc), secrets.values())
        except (OSError, ValueError, k8s.ApiException) as exc:
            retry_after = None
            message = scrub(f"{type(exc).__name__}: {exc}", secrets.values())
        else:
            return Outcome(
                ok=True, requested_at=requested, completed_at=datetime.now(UTC),
                plan=plan, result=result,
            )  # fmt: skip
        wait = attempt_delay(attempts, retry_after, self.policy)
        return Outcome(
            ok=False, requested_at=requested, completed_at=None, message=message,
            next_attempt_at=datetime.now(UTC) + timedelta(seconds=wait),
        )  # fmt: skip

    def _plan(
        self,
        *,
        namespace: str,
        publication: str,
        spec: PrepPublicationSpec,
        cut: str,
        cuts: Mapping[str, Obj],
        purged_cut: str | None,
        pods: list[PodAddress],
    ) -> Plan:
        cdn = spec.cdn
        configured = Configured(
            paths=tuple(cdn.paths), prefixes=tuple(cdn.prefixes), tags=tuple(cdn.tags),
            everything=cdn.everything,
        )  # fmt: skip
        caps = CAPS[cdn.provider.value]
        if configured:
            return plan_purge(old=None, new={}, no_store=(), caps=caps, configured=configured)
        token = _secret_data(self.api, namespace, Names(publication).agent_token).get("token", "")
        new = manifest_of(cut, pods=pods, token=token, digest=_digest(cuts.get(cut)))
        if new is None:
            raise PurgeError(f"no pod could give the manifest of cut {cut}")
        old = None
        if purged_cut and purged_cut != cut:
            old = manifest_of(
                purged_cut, pods=pods, token=token, digest=_digest(cuts.get(purged_cut))
            )
        elif purged_cut == cut:
            old = new
        return plan_purge(old=old, new=new, no_store=spec.cache.no_store_paths, caps=caps)


def _digest(cut: Obj | None) -> str | None:
    return ((cut or {}).get("spec") or {}).get("manifestDigest")


def cut_purge_patch(outcome: Outcome, *, provider: str, attempts: int) -> Obj:
    """status.purge of the PrepCut after an attempt."""
    patch: Obj = {
        "provider": provider,
        "requestedAt": _stamp(outcome.requested_at),
        "attempts": attempts,
    }
    if outcome.ok:
        assert outcome.result is not None
        assert outcome.plan is not None
        ids = outcome.result.request_ids
        patch.update(
            outcome="Succeeded",
            completedAt=_stamp(outcome.completed_at or outcome.requested_at),
            requestId=ids[0] if ids else None,
            requests=outcome.result.requests,
            items=outcome.result.items,
            plan=outcome.plan.why,
            message=None,
            nextAttemptAt=None,
        )
    else:
        patch.update(
            outcome="Failed",
            completedAt=None,
            message=(outcome.message or "")[:1000],
            nextAttemptAt=_stamp(outcome.next_attempt_at) if outcome.next_attempt_at else None,
        )
    return patch


def summary(outcome: Outcome, cut: str, provider: str) -> str:
    """The Event message of an attempt (no credentials: they never reach an Outcome)."""
    if outcome.ok:
        assert outcome.result is not None
        assert outcome.plan is not None
        plan, result = outcome.plan, outcome.result
        took = (
            (outcome.completed_at or outcome.requested_at) - outcome.requested_at
        ).total_seconds()
        what = "everything" if plan.everything else f"{plan.items} items"
        ident = f", id {result.request_ids[0]}" if result.request_ids else ""
        return (
            f"purged {what} of cut {cut} from {provider} in {result.requests} requests, "
            f"{took:.2f}s ({plan.why}{ident})"
        )
    when = _stamp(outcome.next_attempt_at) if outcome.next_attempt_at else "later"
    return f"purge of cut {cut} on {provider} failed, retrying at {when}: {outcome.message}"
