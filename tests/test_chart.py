"""The Helm chart and manifests/install.yaml: rendering, schema, RBAC, and installs on the real API server."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from .chart_tools import (
    CHART,
    SCENARIOS,
    Helm,
    granted,
    helm_path,
    lines_with,
    of_kind,
    one,
    plural,
    service_account_kubeconfig,
)
from .conftest import CHILDREN, REPO, OperatorProcess, install_crds, kubectl, wait_for

CRD_FILES = sorted((REPO / "crds").glob("*.yaml"))
CRD_NAMES = [
    "preppublications.prep.difusor.io",
    "prepcuts.prep.difusor.io",
    "prepincidents.prep.difusor.io",
]
CHILD_VERBS = {"get", "list", "create", "patch", "delete"}


@pytest.fixture(scope="session")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    """helm (the pinned one), with its own cache and config directories."""
    return Helm(helm_path(), tmp_path_factory.mktemp("helm"))


def scenario_id(path: Path) -> str:
    return path.name.removesuffix("-values.yaml")


# --- rendering, no cluster -------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
def test_the_chart_lints_cleanly_with_every_scenario(helm: Helm, values: Path) -> None:
    helm.run("lint", str(CHART), "--strict", "-f", str(values))


@pytest.mark.unit
def test_there_is_a_scenario_for_each_install_mode() -> None:
    assert {scenario_id(p) for p in SCENARIOS} >= {
        "default",
        "namespaced",
        "no-crds",
        "servicemonitor",
    }


@pytest.mark.unit
@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("bogus=1", "bogus"),
        ("crds.kep=true", "kep"),
        ("metrics.serviceMonitor.intervall=1s", "intervall"),
    ],
)
def test_an_unknown_value_fails_the_render_naming_the_key(
    helm: Helm, setting: str, named: str
) -> None:
    proc = helm.run("template", "r", str(CHART), "--set", setting, check=False)
    assert proc.returncode != 0
    assert named in proc.stderr
    assert "additional properties" in proc.stderr


def _schema_nodes(node: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if isinstance(node, dict):
        yield path, node
        for key, child in (node.get("properties") or {}).items():
            yield from _schema_nodes(child, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            yield from _schema_nodes(node["items"], f"{path}[]")


#: Kubernetes types passed through whole (their own API server validation applies).
PASSTHROUGH = {
    "$.affinity.nodeAffinity",
    "$.affinity.podAffinity",
    "$.affinity.podAntiAffinity",
    "$.extraEnv[].valueFrom",
}


@pytest.mark.unit
def test_the_values_schema_closes_every_object_and_documents_every_key() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    for path, node in _schema_nodes(schema, "$"):
        if node.get("type") != "object" or path in PASSTHROUGH:
            continue
        extra = node.get("additionalProperties")
        if "properties" in node:
            assert extra is False, f"{path} must set additionalProperties: false"
        else:
            assert isinstance(extra, dict), f"{path} is a map: its values need a schema"
    lines = (CHART / "values.yaml").read_text().splitlines()
    documented: set[str] = set()
    present: set[str] = set()
    stack: list[tuple[int, str]] = []
    for number, line in enumerate(lines):
        key = line.strip().split(":", 1)[0]
        if line.lstrip().startswith(("#", "-")) or ":" not in line or not key.isidentifier():
            continue
        indent = len(line) - len(line.lstrip())
        stack = [(i, k) for i, k in stack if i < indent] + [(indent, key)]
        present.add(".".join(k for _, k in stack))
        if lines[number - 1].strip().startswith("#"):
            documented.add(".".join(k for _, k in stack))

    def keys(node: dict[str, Any], prefix: str) -> Iterator[str]:
        for key, sub in (node.get("properties") or {}).items():
            yield f"{prefix}{key}"
            yield from keys(sub, f"{prefix}{key}.")

    missing = sorted((set(keys(schema, "")) & present) - documented)
    assert not missing, f"values.yaml keys without a comment above them: {missing}"


@pytest.mark.unit
def test_the_charts_crds_are_the_generated_ones() -> None:
    copies = sorted((CHART / "files" / "crds").glob("*.yaml"))
    assert [p.name for p in copies] == [p.name for p in CRD_FILES], "run `make manifests`"
    for source, copy in zip(CRD_FILES, copies, strict=True):
        assert copy.read_text() == source.read_text(), f"{copy} is stale: run `make manifests`"


@pytest.mark.unit
def test_rendered_crds_carry_the_generated_spec_and_the_keep_policy(helm: Helm) -> None:
    rendered = {
        d["metadata"]["name"]: d for d in of_kind(helm.template(), "CustomResourceDefinition")
    }
    assert sorted(rendered) == sorted(CRD_NAMES)
    for path in CRD_FILES:
        source = yaml.safe_load(path.read_text())
        crd = rendered[source["metadata"]["name"]]
        assert crd["spec"] == source["spec"]
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}

    loose = of_kind(helm.template("--set", "crds.keep=false"), "CustomResourceDefinition")
    assert len(loose) == len(CRD_NAMES)
    assert all("annotations" not in crd["metadata"] for crd in loose)
    assert of_kind(helm.template("--set", "crds.enabled=false"), "CustomResourceDefinition") == []


@pytest.mark.unit
def test_install_yaml_is_rendered_from_the_current_chart(helm: Helm) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "hack" / "render-manifests.sh"), "--stdout"],
        capture_output=True,
        text=True,
        env={**helm.env, "HELM": helm.path},
        check=True,
        timeout=120,
    )
    current = (REPO / "manifests" / "install.yaml").read_text()
    assert proc.stdout == current, "manifests/install.yaml is stale: run `make manifests`"
    docs = [d for d in yaml.safe_load_all(current) if d]
    assert docs[0]["kind"] == "Namespace"
    assert docs[0]["metadata"]["name"] == "difusor-system"
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] == "Deployment"} == {
        "difusor-system"
    }


@pytest.mark.unit
def test_every_template_holds_the_kind_its_name_says(helm: Helm) -> None:
    expected = {
        "deployment": "Deployment",
        "serviceaccount": "ServiceAccount",
        "clusterrole": "ClusterRole",
        "clusterrolebinding": "ClusterRoleBinding",
        "role": "Role",
        "rolebinding": "RoleBinding",
        "service": "Service",
        "servicemonitor": "ServiceMonitor",
        "crd": "CustomResourceDefinition",
        "configmap": "ConfigMap",
    }
    templates = sorted(p for p in (CHART / "templates").glob("*.yaml"))
    assert templates
    everything = [
        "-f", str(CHART / "ci" / "servicemonitor-values.yaml"),
        "-f", str(CHART / "ci" / "cache-values.yaml"),
        "--set", "watchNamespaces={a,b}",
    ]  # fmt: skip
    for path in templates:
        component, _, kind = path.stem.rpartition("-")
        assert component, f"{path.name} is not <component>-<kind>.yaml"
        docs = helm.show_only(path.name, *everything)
        assert docs, f"{path.name} rendered nothing"
        assert {d["kind"] for d in docs} == {expected[kind]}, path.name


@pytest.mark.unit
def test_the_operator_runs_one_restricted_replica_with_kopfs_liveness(helm: Helm) -> None:
    docs = helm.template()
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    assert container["args"] == [
        "operator", "--liveness", "http://0.0.0.0:8080/healthz", "--metrics", "0.0.0.0:9090",
    ]  # fmt: skip
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "healthz"}
    assert {"name": "healthz", "containerPort": 8080, "protocol": "TCP"} in container["ports"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["requests"]
    assert container["resources"]["limits"]
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
    assert {v["name"]: v for v in pod["volumes"]}["tmp"]["emptyDir"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DIFUSOR_IMAGE"] == container["image"] == "ghcr.io/difusor/difusor:0.1.0"
    assert env["DIFUSOR_NGINX_IMAGE"] == "ghcr.io/difusor/difusor-nginx:0.1.0"
    assert env["DIFUSOR_NGINX_RESOLVER"] == "lua"
    assert pod["serviceAccountName"] == one(docs, "ServiceAccount")["metadata"]["name"]

    pinned = one(
        helm.template(
            "--set", "image.digest=sha256:" + "a" * 64,
            "--set", "webImage=registry.example.mx/difusor:1",
            "--set", "nginxImage=registry.example.mx/nginx:1",
            "--set", "nginxResolver=realpath",
        ),
        "Deployment",
    )  # fmt: skip
    (container,) = pinned["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == "ghcr.io/difusor/difusor@sha256:" + "a" * 64
    assert env["DIFUSOR_IMAGE"] == "registry.example.mx/difusor:1"
    assert env["DIFUSOR_NGINX_IMAGE"] == "registry.example.mx/nginx:1"
    assert env["DIFUSOR_NGINX_RESOLVER"] == "realpath"


def _kopf_resources() -> set[tuple[str, str]]:
    """(group, plural) of every resource the operator's kopf handlers watch."""
    import kopf

    import difusor.controller.handlers  # noqa: F401  (registers the handlers)

    registry = kopf.get_default_registry()
    found = set()
    for reg in (registry._watching, registry._changing, registry._spawning):
        for handler in reg.get_all_handlers():
            selector = handler.selector
            assert selector is not None, handler
            resource = selector.plural or selector.any_name
            assert resource, handler
            found.add((selector.group or "", resource))
    return found


@pytest.mark.unit
def test_the_cluster_role_covers_what_the_operator_does_and_the_role_it_grants(
    helm: Helm,
) -> None:
    from difusor.models import PrepPublicationSpec
    from difusor.render.children import Target, agent_role, managed_kinds

    rules = granted(one(helm.template(), "ClusterRole")["rules"])
    for api_version, kind in managed_kinds():
        group = api_version.rpartition("/")[0]
        for verb in CHILD_VERBS:
            assert (group, plural(kind), verb) in rules, f"{kind}: {verb}"
    assert ("", "secrets", "create") in rules
    for group, resource in _kopf_resources():
        for verb in ("list", "watch"):
            assert (group, resource, verb) in rules, f"kopf watches {resource}"
    for verb in ("get", "patch"):
        assert ("prep.difusor.io", "preppublications", verb) in rules
    assert ("prep.difusor.io", "preppublications/status", "patch") in rules
    assert ("prep.difusor.io", "prepcuts/status", "patch") in rules
    assert ("", "events", "create") in rules
    assert ("apiextensions.k8s.io", "customresourcedefinitions", "watch") in rules

    spec = PrepPublicationSpec.model_validate(
        {"host": "a.mx", "sftp": {"authorizedKeysSecret": "k"}}
    )
    agents = granted(agent_role(spec, Target(name="a", namespace="n"))["rules"])
    assert agents <= rules, (
        f"the agents' Role grants more than the operator holds: {agents - rules}"
    )


@pytest.mark.unit
def test_the_operator_reads_secrets_only_by_name_and_touches_no_other_cluster_objects(
    helm: Helm,
) -> None:
    rules = granted(one(helm.template(), "ClusterRole")["rules"])
    # get (the CDN credentials and the agents' token, by name), never list or watch.
    assert {verb for group, res, verb in rules if res == "secrets"} == {"create", "get"}
    assert not {r for r in rules if "*" in r}
    assert not {r for r in rules if r[2] in ("escalate", "bind", "impersonate")}
    assert not {r for r in rules if r[1] in ("clusterroles", "clusterrolebindings", "nodes")}


@pytest.mark.unit
def test_watching_namespaces_grants_roles_there_and_passes_them_to_the_operator(
    helm: Helm,
) -> None:
    docs = helm.template("-f", str(CHART / "ci" / "namespaced-values.yaml"), namespace="ops")
    watched = ["prep-michoacan", "prep-jalisco"]
    cluster_rules = granted(one(docs, "ClusterRole")["rules"])
    assert cluster_rules == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    roles = of_kind(docs, "Role")
    bindings = of_kind(docs, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == sorted(watched)
    assert sorted(b["metadata"]["namespace"] for b in bindings) == sorted(watched)
    full = granted(one(helm.template(), "ClusterRole")["rules"])
    namespaced_part = {r for r in full if r[1] != "customresourcedefinitions"}
    for role in roles:
        assert granted(role["rules"]) == namespaced_part
    for binding in bindings:
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "difusor", "namespace": "ops"}
        ]
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"][5:] == ["-n", "prep-michoacan", "-n", "prep-jalisco"]


@pytest.mark.unit
def test_cluster_scoped_objects_are_named_per_release(helm: Helm) -> None:
    names = set()
    for release, namespace in (("difusor", "a"), ("difusor", "b"), ("other", "a")):
        docs = helm.template(release=release, namespace=namespace)
        role = one(docs, "ClusterRole")["metadata"]["name"]
        assert one(docs, "ClusterRoleBinding")["metadata"]["name"] == role
        assert one(docs, "ClusterRoleBinding")["roleRef"]["name"] == role
        names.add(role)
    assert len(names) == 3


@pytest.mark.unit
def test_metrics_objects_appear_only_when_asked(helm: Helm) -> None:
    plain = helm.template()
    assert one(plain, "Service")["spec"]["ports"][0]["name"] == "metrics"
    assert not of_kind(plain, "ServiceMonitor")
    quiet = helm.template("--set", "metrics.enabled=false")
    assert not of_kind(quiet, "Service")
    (container,) = one(quiet, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert "--metrics" not in container["args"]
    docs = helm.template("-f", str(CHART / "ci" / "servicemonitor-values.yaml"))
    service = one(docs, "Service")
    monitor = one(docs, "ServiceMonitor")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    (container,) = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert {"name": "metrics", "containerPort": 9090, "protocol": "TCP"} in container["ports"]
    lonely = helm.run(
        "template", "r", str(CHART), "--set", "metrics.serviceMonitor.enabled=true",
        "--set", "metrics.enabled=false", check=False,
    )  # fmt: skip
    assert lonely.returncode != 0
    assert "metrics.enabled" in lonely.stderr


# --- the real API server ---------------------------------------------------------------------


def _fresh(kubeconfig: str, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kubectl(kubeconfig, "create", "namespace", name)
    return name


def _drop_namespaces(kubeconfig: str, names: list[str]) -> None:
    for name in names:
        kubectl(kubeconfig, "delete", "namespace", name, "--wait=false", check=False)


def _served(kubeconfig: str) -> set[str]:
    return set(kubectl(kubeconfig, "api-versions").split())


def _install(
    helm: Helm, kubeconfig: str, release: str, namespace: str, *args: str, verb: str = "install"
) -> None:
    helm.run(
        verb, release, str(CHART), "--kubeconfig", kubeconfig, "--namespace", namespace,
        "--timeout", "5m", *args,
    )  # fmt: skip


def _uninstall(helm: Helm, kubeconfig: str, release: str, namespace: str) -> None:
    helm.run(
        "uninstall", release, "--kubeconfig", kubeconfig, "--namespace", namespace,
        "--ignore-not-found", "--timeout", "3m", check=False,
    )  # fmt: skip


@pytest.mark.cluster
@pytest.mark.timeout(600)
@pytest.mark.parametrize("values", SCENARIOS, ids=scenario_id)
def test_every_scenario_renders_objects_the_api_server_accepts(
    helm: Helm, crds: str, values: Path
) -> None:
    kc = crds
    created: list[str] = []
    try:
        namespace = _fresh(kc, "chart")
        created.append(namespace)
        scenario = yaml.safe_load(values.read_text()) or {}
        extra: list[str] = []
        if scenario.get("watchNamespaces"):
            watched = [_fresh(kc, "watched") for _ in scenario["watchNamespaces"]]
            created.extend(watched)
            extra = ["--set", "watchNamespaces={" + ",".join(watched) + "}"]
        docs = helm.template("-f", str(values), *extra, namespace=namespace, release="dry")
        served = _served(kc)
        skipped = [d for d in docs if d["apiVersion"] not in served]
        assert {d["kind"] for d in skipped} <= {"ServiceMonitor"}, (
            "only optional APIs may be missing"
        )
        crd_docs = of_kind(docs, "CustomResourceDefinition")
        rest = [d for d in docs if d not in crd_docs and d not in skipped]
        for batch in (crd_docs, rest):
            if not batch:
                continue
            out = kubectl(
                kc, "apply", "--dry-run=server", "--server-side", "--force-conflicts",
                "--field-manager=difusor-chart-test", "-f", "-",
                stdin=yaml.safe_dump_all(batch),
            )  # fmt: skip
            assert out.count("(server dry run)") == len(batch), out
    finally:
        _drop_namespaces(kc, created)


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_helm_install_schedules_the_operator_pod_under_restricted_pod_security(
    helm: Helm, crds: str
) -> None:
    kc = crds
    namespace = _fresh(kc, "chart")
    release = f"r{uuid.uuid4().hex[:6]}"
    try:
        # Pod Security admission rejects the operator's pod here unless it is restricted.
        kubectl(
            kc, "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
        _install(helm, kc, release, namespace, "--set", "crds.enabled=false")
        selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/component=operator"

        def running() -> bool:
            pods = json.loads(
                kubectl(kc, "-n", namespace, "get", "pods", "-l", selector, "-o", "json")
            )
            return any(p["status"].get("phase") == "Running" for p in pods["items"])

        wait_for("the operator pod Running", running, timeout=180)
        status = helm.run("status", release, "--kubeconfig", kc, "--namespace", namespace).stdout
        assert "STATUS: deployed" in status
        assert f"kubectl -n {namespace} rollout status deployment/{release}-difusor" in status
    finally:
        _uninstall(helm, kc, release, namespace)
        _drop_namespaces(kc, [namespace])
    leftovers = kubectl(
        kc, "get", "clusterrole", "-o", "name", "-l", f"app.kubernetes.io/instance={release}"
    )
    assert leftovers.strip() == ""


def _publication(name: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "prep.difusor.io/v1alpha1",
            "kind": "PrepPublication",
            "metadata": {"name": name},
            "spec": {
                "host": f"{name}.example.mx",
                "replicas": 2,
                "sftp": {"authorizedKeysSecret": "keys"},
            },
        }
    )


def _exists(kubeconfig: str, namespace: str, kind: str, name: str) -> bool:
    out = kubectl(kubeconfig, "-n", namespace, "get", kind, name, "-o", "name", check=False)
    return out.strip().endswith(f"/{name}")


@pytest.fixture(scope="module")
def own_cluster(kubeconfig: str) -> Iterator[str]:
    """A control plane where no other operator runs (with the CRDs from crds/).

    Other test sessions may run a cluster-wide operator on the shared cluster at the same time;
    it would reconcile our publication first and prove nothing about the chart's RBAC. With
    $DIFUSOR_TEST_KUBECONFIG (kind) the given cluster is used as it is.
    """
    if os.environ.get("DIFUSOR_TEST_KUBECONFIG"):
        yield kubeconfig
        return
    name = f"difusor-chart-{os.getpid()}"
    script = str(REPO / "hack" / "cluster.sh")
    path = subprocess.run(
        ["bash", script, "up", name], capture_output=True, text=True, check=True, timeout=600
    ).stdout.strip()
    try:
        install_crds(path)
        yield path
    finally:
        if not os.environ.get("DIFUSOR_KEEP_CLUSTER"):
            subprocess.run(
                ["bash", script, "down", name], capture_output=True, check=False, timeout=120
            )


@pytest.mark.cluster
@pytest.mark.timeout(900)
@pytest.mark.parametrize("mode", ["cluster-wide", "watched-namespace"])
def test_the_operator_under_the_charts_service_account_reconciles_without_forbidden(
    helm: Helm, own_cluster: str, tmp_path: Path, mode: str
) -> None:
    kc = own_cluster
    home = _fresh(kc, "chart")
    publications = _fresh(kc, "pubs")
    release = f"r{uuid.uuid4().hex[:6]}"
    watched = [publications] if mode == "watched-namespace" else []
    args = ["--set", "crds.enabled=false"]
    if watched:
        args += ["--set", "watchNamespaces={" + ",".join(watched) + "}"]
    operator: OperatorProcess | None = None
    try:
        _install(helm, kc, release, home, *args)
        sa_config = service_account_kubeconfig(
            kc,
            namespace=home,
            service_account=f"{release}-difusor",
            path=tmp_path / "sa.kubeconfig",
        )
        # The token is the chart's identity: RBAC of the API server decides, not the admin's.
        whoami = kubectl(
            str(sa_config), "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"
        )
        assert whoami == f"system:serviceaccount:{home}:{release}-difusor"
        operator = OperatorProcess(
            str(sa_config), tmp_path / "operator.log", namespaces=tuple(watched)
        )
        operator.start()
        kubectl(kc, "-n", publications, "apply", "-f", "-", stdin=_publication("gamma"))

        def reconciled() -> bool:
            if not all(_exists(kc, publications, k, n.format(n="gamma")) for k, n in CHILDREN):
                return False
            pub = json.loads(kubectl(kc, "-n", publications, "get", "prep", "gamma", "-o", "json"))
            status = pub.get("status") or {}
            return bool(status.get("conditions")) and status.get("observedGeneration") == 1

        try:
            wait_for(f"gamma reconciled ({mode})", reconciled, timeout=240, interval=1)
        except AssertionError as exc:
            denied = "\n".join(list(lines_with(operator.log(), "forbidden"))[:20])
            raise AssertionError(f"{exc}\noperator log, forbidden lines:\n{denied}") from None
        events = kubectl(
            kc, "-n", publications, "get", "events", "--field-selector", "involvedObject.name=gamma"
        )
        assert "ChildChanged" in events
        operator.stop()
        log = operator.log()
        forbidden = list(lines_with(log, "forbidden"))
        assert not forbidden, "\n".join(forbidden[:20])
        assert f"Publication {publications}/gamma: created StatefulSet gamma-web" in log
    finally:
        if operator:
            operator.stop()
        _uninstall(helm, kc, release, home)
        _drop_namespaces(kc, [home, publications])


def _uid(kubeconfig: str, *what: str) -> str:
    return kubectl(kubeconfig, *what, "-o", "jsonpath={.metadata.uid}").strip()


@pytest.mark.cluster
@pytest.mark.timeout(600)
def test_an_upgrade_keeps_publications_and_an_uninstall_keeps_the_crds(
    helm: Helm, crds: str
) -> None:
    for source, copy in zip(
        CRD_FILES, sorted((CHART / "files" / "crds").glob("*.yaml")), strict=True
    ):
        # Installing stale CRDs would roll back the schema for everyone sharing the cluster.
        assert copy.read_text() == source.read_text(), "chart CRDs are stale: run `make manifests`"
    kc = crds
    home = _fresh(kc, "chart")
    publications = _fresh(kc, "pubs")
    release = f"r{uuid.uuid4().hex[:6]}"
    crd_uids = {name: _uid(kc, "get", "crd", name) for name in CRD_NAMES}
    try:
        # The session's CRDs exist already (applied from crds/): the release adopts them.
        _install(helm, kc, release, home, "--take-ownership", "--force-conflicts")
        kubectl(kc, "-n", publications, "apply", "-f", "-", stdin=_publication("delta"))
        publication_uid = _uid(kc, "-n", publications, "get", "prep", "delta")
        _install(
            helm, kc, release, home, "--set", "reconcileInterval=45", "--set", "nginxImage=nginx:1",
            "--force-conflicts", verb="upgrade",
        )  # fmt: skip
        deployment = json.loads(
            kubectl(kc, "-n", home, "get", "deployment", f"{release}-difusor", "-o", "json")
        )
        env = {
            e["name"]: e.get("value")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["DIFUSOR_RECONCILE_INTERVAL"] == "45"
        assert _uid(kc, "-n", publications, "get", "prep", "delta") == publication_uid
        assert {name: _uid(kc, "get", "crd", name) for name in CRD_NAMES} == crd_uids

        _uninstall(helm, kc, release, home)
        assert {name: _uid(kc, "get", "crd", name) for name in CRD_NAMES} == crd_uids
        assert _uid(kc, "-n", publications, "get", "prep", "delta") == publication_uid
        assert not _exists(kc, home, "deployment", f"{release}-difusor")
    finally:
        _uninstall(helm, kc, release, home)
        _drop_namespaces(kc, [home, publications])
