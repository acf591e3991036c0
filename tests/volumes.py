"""Test stand-in for a storage provisioner: binds each pending content PVC to a hostPath PV."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import kubectl

PV_ROOT = Path("/tmp/difusor-test-pv")


def bind_pending_claims(kubeconfig: str, namespace: str) -> int:
    """Create a pre-bound PV for every Pending PVC in the namespace; returns how many were made."""
    claims = json.loads(kubectl(kubeconfig, "-n", namespace, "get", "pvc", "-o", "json"))["items"]
    made = 0
    for claim in claims:
        if claim["status"].get("phase") != "Pending":
            continue
        name = claim["metadata"]["name"]
        pv_name = f"{namespace}-{name}"
        path = PV_ROOT / pv_name
        path.mkdir(parents=True, exist_ok=True)
        pv = {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": pv_name, "labels": {"difusor-test": namespace}},
            "spec": {
                "capacity": {"storage": claim["spec"]["resources"]["requests"]["storage"]},
                "accessModes": ["ReadWriteOnce"],
                "persistentVolumeReclaimPolicy": "Retain",
                "storageClassName": claim["spec"].get("storageClassName") or "",
                "hostPath": {"path": str(path)},
                "claimRef": {"namespace": namespace, "name": name},
            },
        }
        kubectl(kubeconfig, "apply", "-f", "-", stdin=json.dumps(pv))
        made += 1
    return made
