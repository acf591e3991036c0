"""The PrometheusRule of a publication, proven by promtool on synthetic series."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from difusor.models import PrepPublicationSpec
from difusor.render.children import Target, render_all
from difusor.render.monitoring import MONITORING, rule_groups

from .conftest import require_binary

pytestmark = pytest.mark.unit

NS, PUB = "difusor", "prep-michoacan"
SPEC = PrepPublicationSpec.model_validate(
    {"host": "prep.example.mx", "sftp": {"authorizedKeysSecret": "k"}}
)
WHERE = f"{NS}/{PUB}"
SEL = f'namespace="{NS}",publication="{PUB}"'


def rules_file(tmp_path: Path) -> Path:
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rule_groups(SPEC, name=PUB, namespace=NS)}))
    return path


def annotations(alert: str, **values: str) -> dict[str, str]:
    """The rule's annotations with its templates filled in as Prometheus would."""
    for group in rule_groups(SPEC, name=PUB, namespace=NS):
        for rule in group["rules"]:
            if rule.get("alert") == alert:
                out = {}
                for key, text in rule["annotations"].items():
                    for template, value in values.items():
                        text = text.replace(template, value)
                    out[key] = text
                return out
    raise KeyError(alert)


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_binary("promtool"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_rules_pass_promtool_check(tmp_path: Path) -> None:
    proc = promtool("check", "rules", str(rules_file(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def burn(long: str, factor: str) -> dict[str, Any]:
    return {
        "exp_labels": {
            "namespace": NS, "publication": PUB, "severity": "critical",
            "long_window": long, "burn_rate": factor,
        },
        "exp_annotations": _burn_annotations(long),
    }  # fmt: skip


def _burn_annotations(long: str) -> dict[str, str]:
    for group in rule_groups(SPEC, name=PUB, namespace=NS):
        for rule in group["rules"]:
            if (
                rule.get("alert") == "DifusorErrorBudgetBurn"
                and rule["labels"]["long_window"] == long
            ):
                return dict(rule["annotations"])
    raise KeyError(long)


def test_every_alert_fires_when_it_should_and_not_before(tmp_path: Path) -> None:
    labels = {"namespace": NS, "publication": PUB}
    tests = {
        "rule_files": [str(rules_file(tmp_path))],
        "evaluation_interval": "1m",
        "tests": [
            {
                # One probe every 5 s; from minute 60 one in three fails.
                "interval": "1m",
                "input_series": [
                    {"series": f'difusor_probes_total{{{SEL},result="ok"}}', "values": "0+12x120"},
                    {"series": f'difusor_probes_total{{{SEL},result="failed"}}', "values": "0+0x60 6+6x60"},
                ],
                "alert_rule_test": [
                    {"eval_time": "59m", "alertname": "DifusorErrorBudgetBurn", "exp_alerts": []},
                    {
                        "eval_time": "66m", "alertname": "DifusorErrorBudgetBurn",
                        "exp_alerts": [burn("1h", "14.4"), burn("6h", "6.0")],
                    },
                ],
            },
            {
                "interval": "1m",
                "input_series": [
                    # The cut ages a minute a minute; cadence 20 + grace 10 = 1800 s.
                    {"series": f"difusor_active_cut_age_seconds{{{SEL}}}", "values": "0+60x60"},
                    {"series": f"difusor_pods_off_active_cut{{{SEL}}}", "values": "0 1 1 1 1 1"},
                    {"series": f'difusor_promotion_failures_total{{{SEL},reason="CommitTimeout"}}', "values": "0 0 1 1"},
                    {"series": f'difusor_cuts_rejected_total{{{SEL},pod="prep-michoacan-web-0",reason="PathTraversal"}}', "values": "0 0 1 1"},
                    {"series": f'difusor_attack_signal{{{SEL},pod="prep-michoacan-web-1"}}', "values": "0 0 1 1 0"},
                    {"series": f"difusor_rollout_age_seconds{{{SEL}}}", "values": "0+60x10"},
                ],
                "alert_rule_test": [
                    {"eval_time": "30m", "alertname": "DifusorCutStale", "exp_alerts": []},
                    {
                        "eval_time": "33m", "alertname": "DifusorCutStale",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "severity": "warning"},
                            "exp_annotations": annotations(
                                "DifusorCutStale", **{"{{ $value | humanizeDuration }}": "33m 0s"}
                            ),
                        }],
                    },
                    {"eval_time": "2m", "alertname": "DifusorPodOffActiveCut", "exp_alerts": []},
                    {
                        "eval_time": "3m", "alertname": "DifusorPodOffActiveCut",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "severity": "warning"},
                            "exp_annotations": annotations(
                                "DifusorPodOffActiveCut", **{"{{ $value }}": "1"}
                            ),
                        }],
                    },
                    {"eval_time": "1m", "alertname": "DifusorPromotionFailed", "exp_alerts": []},
                    {
                        "eval_time": "2m", "alertname": "DifusorPromotionFailed",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "reason": "CommitTimeout", "severity": "warning"},
                            "exp_annotations": annotations(
                                "DifusorPromotionFailed", **{"{{ $labels.reason }}": "CommitTimeout"}
                            ),
                        }],
                    },
                    {
                        "eval_time": "2m", "alertname": "DifusorUploadRejected",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "severity": "warning"},
                            "exp_annotations": annotations("DifusorUploadRejected"),
                        }],
                    },
                    {
                        "eval_time": "2m", "alertname": "DifusorAttack",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "severity": "warning"},
                            "exp_annotations": annotations("DifusorAttack"),
                        }],
                    },
                    {"eval_time": "4m", "alertname": "DifusorAttack", "exp_alerts": []},
                    # Stage timeout 120 s: stuck after 240 s, for a minute.
                    {"eval_time": "4m", "alertname": "DifusorPromotionStuck", "exp_alerts": []},
                    {
                        "eval_time": "6m", "alertname": "DifusorPromotionStuck",
                        "exp_alerts": [{
                            "exp_labels": {**labels, "severity": "critical"},
                            "exp_annotations": annotations("DifusorPromotionStuck"),
                        }],
                    },
                ],
            },
        ],
    }  # fmt: skip
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    proc = promtool("test", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_monitoring_objects_are_rendered_only_where_the_cluster_serves_them() -> None:
    plain = render_all(SPEC, Target(name=PUB, namespace=NS, uid="u"))
    assert not [o for o in plain if o["apiVersion"] == MONITORING]
    target = Target(name=PUB, namespace=NS, uid="u", capabilities=frozenset({MONITORING}))
    kinds = {o["kind"]: o for o in render_all(SPEC, target) if o["apiVersion"] == MONITORING}
    assert set(kinds) == {"PodMonitor", "PrometheusRule"}
    monitor = kinds["PodMonitor"]
    assert monitor["metadata"]["ownerReferences"][0]["name"] == PUB
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "agent"
    off = SPEC.model_copy(
        update={"monitoring": SPEC.monitoring.model_copy(update={"prometheus_rules": False})}
    )
    assert not [o for o in render_all(off, target) if o["apiVersion"] == MONITORING]
