"""The PodMonitor and PrometheusRule of a publication (only where the Prometheus Operator runs).

The rules read the operator's series (labels namespace and publication) and the agents' (the
PodMonitor copies the pod's app.kubernetes.io/instance label into `publication`). The SLO is
the institute's 99.9 % of successful probes, alerted by multiwindow burn rates as in the Google
SRE workbook: 14.4x the budget over 1 h and 5 m, 6x over 6 h and 30 m.
"""

from __future__ import annotations

from typing import Any, Final

from difusor.models import PrepPublicationSpec
from difusor.render.labels import Names, common_labels, selector_labels

MONITORING: Final = "monitoring.coreos.com/v1"
#: The availability the institute asks for, and the error budget it leaves.
SLO: Final = 0.999
BUDGET: Final = round(1 - SLO, 6)
#: (burn factor, long window, short window, severity).
BURN_RATES: Final = ((14.4, "1h", "5m", "critical"), (6.0, "6h", "30m", "critical"))
#: Windows of the probe error ratio recorded for the burn-rate alerts.
WINDOWS: Final = ("5m", "30m", "1h", "6h")
SCRAPE_INTERVAL: Final = "15s"

Obj = dict[str, Any]


def _meta(name: str, namespace: str, publication: str, extra: dict[str, str]) -> Obj:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {**common_labels(publication, component="monitoring"), **extra},
    }


def pod_monitor(spec: PrepPublicationSpec, *, name: str, namespace: str) -> Obj:
    """Scrape every web pod's agent on its `agent` port, labelled with the publication."""
    return {
        "apiVersion": MONITORING,
        "kind": "PodMonitor",
        "metadata": _meta(Names(name).web, namespace, name, spec.monitoring.rule_labels),
        "spec": {
            "selector": {"matchLabels": selector_labels(name)},
            "podMetricsEndpoints": [
                {
                    "port": "agent",
                    "path": "/metrics",
                    "interval": SCRAPE_INTERVAL,
                    "relabelings": [
                        {
                            "sourceLabels": [
                                "__meta_kubernetes_pod_label_app_kubernetes_io_instance"
                            ],
                            "targetLabel": "publication",
                        }
                    ],
                }
            ],
        },
    }


def rule_groups(spec: PrepPublicationSpec, *, name: str, namespace: str) -> list[Obj]:
    """The recording and alerting rules of one publication (Prometheus rule-file groups)."""
    sel = f'namespace="{namespace}",publication="{name}"'
    by = "by (namespace, publication)"
    stale_after = 60 * (spec.monitoring.cut_cadence_minutes + spec.monitoring.cut_grace_minutes)
    stuck_after = 2 * spec.promotion.stage_timeout_seconds
    where = f"{namespace}/{name}"
    records = [
        {
            "record": f"difusor:probe_error_ratio:rate{window}",
            "expr": (
                f'sum {by} (rate(difusor_probes_total{{{sel},result="failed"}}[{window}]))'
                f" / sum {by} (rate(difusor_probes_total{{{sel}}}[{window}]))"
            ),
        }
        for window in WINDOWS
    ]
    alerts: list[Obj] = [
        {
            "alert": "DifusorErrorBudgetBurn",
            "expr": (
                f"difusor:probe_error_ratio:rate{long}{{{sel}}} > {factor} * {BUDGET}"
                f" and difusor:probe_error_ratio:rate{short}{{{sel}}} > {factor} * {BUDGET}"
            ),
            "labels": {"severity": severity, "long_window": long, "burn_rate": str(factor)},
            "annotations": {
                "summary": f"{where} burns its 99.9 % availability budget {factor}x too fast",
                "description": f"Probes failed over {long} and {short} at {factor}x the rate a "
                "99.9 % month allows. `kubectl get incidents` names the cause.",
            },
        }
        for factor, long, short, severity in BURN_RATES
    ]
    alerts += [
        {
            "alert": "DifusorCutStale",
            "expr": f"difusor_active_cut_age_seconds{{{sel}}} > {stale_after}",
            "for": "1m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{where} serves a cut older than its cadence plus grace",
                "description": "The active cut is {{ $value | humanizeDuration }} old; the "
                f"institute publishes every {spec.monitoring.cut_cadence_minutes} minutes. "
                "Check the SFTP uploads and rejected cuts.",
            },
        },
        {
            "alert": "DifusorPromotionFailed",
            "expr": f"increase(difusor_promotion_failures_total{{{sel}}}[15m]) > 0",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{where}: a promotion went wrong ({{{{ $labels.reason }}}})",
                "description": "See the publication's Warning Events and `kubectl get incidents`.",
            },
        },
        {
            "alert": "DifusorPromotionStuck",
            "expr": f"difusor_rollout_age_seconds{{{sel}}} > {stuck_after}",
            "for": "1m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": f"{where}: a rollout has run for over {stuck_after}s",
                "description": "status.rollout shows the phase; the agents' pods their reports.",
            },
        },
        {
            "alert": "DifusorUploadRejected",
            "expr": f"sum {by} (increase(difusor_cuts_rejected_total{{{sel}}}[15m])) > 0",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{where} rejected an upload from the institute",
                "description": "`kubectl get cuts` shows the Rejected cut and its reason.",
            },
        },
        {
            "alert": "DifusorPodOffActiveCut",
            "expr": f"difusor_pods_off_active_cut{{{sel}}} > 0",
            "for": "2m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{where}: {{{{ $value }}}} pods serve a cut other than the active one",
                "description": "They are out of rotation until they catch up from a peer.",
            },
        },
        {
            "alert": "DifusorAttack",
            "expr": f"max {by} (difusor_attack_signal{{{sel}}}) > 0",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": f"{where} is under attack",
                "description": "status.containment lists the ranges denied on every pod.",
            },
        },
    ]
    return [
        {"name": f"difusor-{namespace}-{name}-slo", "rules": records},
        {"name": f"difusor-{namespace}-{name}-alerts", "rules": alerts},
    ]


def prometheus_rule(spec: PrepPublicationSpec, *, name: str, namespace: str) -> Obj:
    """The PrometheusRule holding rule_groups."""
    return {
        "apiVersion": MONITORING,
        "kind": "PrometheusRule",
        "metadata": _meta(name, namespace, name, spec.monitoring.rule_labels),
        "spec": {"groups": rule_groups(spec, name=name, namespace=namespace)},
    }
