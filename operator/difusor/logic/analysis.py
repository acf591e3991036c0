"""The memoria técnica's figures and conclusions, computed from the night's records (pure)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from difusor.logic.stats import Night, percentile
from difusor.models import parse_time

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class CutRow:
    """One cut on the timeline."""

    id: str
    phase: str
    time: datetime | None
    received: datetime | None
    verified: datetime | None
    live: datetime | None
    purged: datetime | None
    reason: str | None

    @property
    def lag_seconds(self) -> float | None:
        """From the upload being complete to every pod serving it."""
        if self.received is None or self.live is None:
            return None
        return (self.live - self.received).total_seconds()


def _time(value: object) -> datetime | None:
    return parse_time(value) if isinstance(value, str) and value else None


def cut_rows(cuts: Sequence[Obj], *, start: datetime, end: datetime) -> list[CutRow]:
    """PrepCuts received in [start, end), by time received."""
    rows = []
    for cut in cuts:
        spec, status = cut.get("spec") or {}, cut.get("status") or {}
        received = _time(status.get("receivedAt"))
        if received is None or not start <= received < end:
            continue
        rows.append(
            CutRow(
                id=str(spec.get("id", "")),
                phase=str(status.get("phase", "")),
                time=_time(spec.get("time")),
                received=received,
                verified=_time(status.get("verifiedAt")),
                live=_time(status.get("servingAt")),
                purged=_time((status.get("purge") or {}).get("completedAt")),
                reason=status.get("reason"),
            )
        )
    return sorted(rows, key=lambda r: (r.received or start, r.id))


@dataclass(frozen=True)
class LagFigures:
    """Upload-to-live lag over the cuts that went live."""

    count: int
    p50: float
    p95: float
    max: float
    worst: str | None


def lag_figures(rows: Sequence[CutRow]) -> LagFigures:
    """p50 / p95 / max of the lag, and the worst cut."""
    lagged = [(r.lag_seconds, r.id) for r in rows if r.lag_seconds is not None]
    values = [lag for lag, _ in lagged]
    worst = max(lagged)[1] if lagged else None
    return LagFigures(
        count=len(values),
        p50=percentile(values, 0.5),
        p95=percentile(values, 0.95),
        max=max(values) if values else 0.0,
        worst=worst,
    )


@dataclass(frozen=True)
class IncidentRow:
    """An incident in the institute's columns."""

    start: datetime
    end: datetime | None
    duration_seconds: float | None
    cause: str
    root_cause: str
    impact: str
    mitigation: str


def incident_rows(incidents: Sequence[Obj], *, start: datetime, end: datetime) -> list[IncidentRow]:
    """PrepIncidents that overlap [start, end), by start."""
    rows = []
    for incident in incidents:
        spec, status = incident.get("spec") or {}, incident.get("status") or {}
        began = _time(spec.get("startedAt"))
        ended = _time(status.get("endedAt"))
        if began is None or began >= end or (ended is not None and ended < start):
            continue
        impact = status.get("impact") or {}
        parts = []
        if impact.get("totalProbes"):
            parts.append(
                f"{impact.get('failedProbes', 0)}/{impact['totalProbes']} sondeos fallidos"
            )
        if impact.get("affectedPods"):
            parts.append("pods: " + ", ".join(impact["affectedPods"]))
        if impact.get("deniedRanges"):
            parts.append("rangos bloqueados: " + ", ".join(impact["deniedRanges"]))
        if impact.get("peakRequestsPerMinute"):
            parts.append(f"pico {impact['peakRequestsPerMinute']} solicitudes/min")
        actions = [str(a.get("action", "")) for a in status.get("actions") or []]
        duration = status.get("durationSeconds")
        rows.append(
            IncidentRow(
                start=began,
                end=ended,
                duration_seconds=float(duration) if duration is not None else None,
                cause=str(status.get("cause", "Unknown")),
                root_cause=str(status.get("rootCause", "")),
                impact="; ".join(parts) or "sin datos de impacto",
                mitigation="; ".join(a for a in actions if a) or "sin acciones registradas",
            )
        )
    return sorted(rows, key=lambda r: r.start)


@dataclass
class Findings:
    """What the analysis found, and what to change, as sentences."""

    findings: list[str] = field(default_factory=list)
    recommendations: list[str] = field(default_factory=list)
    lacking: list[str] = field(default_factory=list)


def _hhmm(minute: int, tz: Any) -> str:
    return datetime.fromtimestamp(minute, tz).strftime("%d/%m %H:%M")


def analyse(
    *,
    night: Night,
    cuts: Sequence[CutRow],
    incidents: Sequence[IncidentRow] | None,
    availability: Obj | None,
    geo_known: bool,
    tz: Any,
    cadence_minutes: int = 20,
) -> Findings:
    """Findings and recommendations from the figures (nothing here is canned: each is a rule)."""
    out = Findings()
    totals = night.totals
    per_minute = {m: c.requests for m, c in night.minutes.items()}
    if per_minute:
        peak_minute, peak = max(per_minute.items(), key=lambda kv: (kv[1], -kv[0]))
        median = percentile(list(per_minute.values()), 0.5)
        at_peak = night.minutes[peak_minute]
        refused = at_peak.too_many + at_peak.status.get(403, 0)
        out.findings.append(
            f"La carga máxima fue de {peak:,} solicitudes en el minuto {_hhmm(peak_minute, tz)}, "
            f"{peak / median if median else 0:.1f} veces la mediana por minuto ({median:,.0f}); "
            f"{refused / peak:.0%} de ellas fueron rechazadas por los límites."
        )
        served = {
            m: c.requests - c.too_many - c.status.get(403, 0) for m, c in night.minutes.items()
        }
        busiest, most = max(served.items(), key=lambda kv: (kv[1], -kv[0]))
        if busiest != peak_minute:
            out.findings.append(
                f"El minuto con más solicitudes atendidas fue {_hhmm(busiest, tz)} ({most:,})."
            )
        first_hour = sum(c.requests for m, c in night.minutes.items() if m < night.start + 3600)
        out.findings.append(
            f"En la primera hora de la publicación se atendieron {first_hour:,} solicitudes "
            f"({first_hour / totals.requests:.0%} del total)."
            if totals.requests
            else "No hubo solicitudes en el periodo."
        )
    else:
        out.findings.append("No hay estadísticas de acceso registradas para el periodo.")
        out.lacking.append("estadísticas de acceso (ningún agente envió registros del periodo)")
    if totals.requests:
        share = totals.too_many / totals.requests
        bots = totals.bots / totals.requests
        out.findings.append(
            f"{totals.too_many:,} solicitudes ({share:.2%}) fueron rechazadas con 429 por los "
            f"límites por cliente; {totals.bots:,} ({bots:.1%}) provinieron de robots."
        )
        if share > 0.05:
            out.recommendations.append(
                f"El {share:.1%} de rechazos 429 es alto: revisar si provienen de pocos rangos "
                "(ataque: lista de bloqueo) o de lectores detrás de un NAT (subir el límite o "
                "confiar en la cabecera de la CDN)."
            )
    lag = lag_figures(cuts)
    if lag.count:
        out.findings.append(
            f"{lag.count} cortes quedaron en línea en todos los pods con un retraso mediano de "
            f"{lag.p50:.0f} s (p95 {lag.p95:.0f} s, máximo {lag.max:.0f} s en el corte {lag.worst})."
        )
        if lag.max > cadence_minutes * 60 / 4:
            out.recommendations.append(
                f"El corte {lag.worst} tardó {lag.max:.0f} s en publicarse, más de una cuarta "
                f"parte del intervalo entre cortes ({cadence_minutes} min): revisar el pod que "
                "lo retrasó y el tiempo de preparación (stageTimeoutSeconds)."
            )
    elif cuts:
        out.findings.append(f"{len(cuts)} cortes recibidos; ninguno llegó a estar en línea.")
    else:
        out.lacking.append("cortes (no hay PrepCuts recibidos en el periodo)")
    rejected = [c for c in cuts if c.phase == "Rejected"]
    if rejected:
        reasons = Counter(c.reason or "?" for c in rejected)
        out.findings.append(
            f"{len(rejected)} paquetes fueron rechazados: "
            + ", ".join(f"{n} por {r}" for r, n in reasons.most_common())
            + "."
        )
    if incidents is None:
        out.lacking.append(
            "registro de incidencias (el clúster no tiene el recurso PrepIncident: "
            "el sondeo de disponibilidad no estaba instalado)"
        )
    elif incidents:
        causes = Counter(i.cause for i in incidents)
        down = sum(i.duration_seconds or 0 for i in incidents)
        out.findings.append(
            f"Se registraron {len(incidents)} incidencias ("
            + ", ".join(f"{n} {c}" for c, n in causes.most_common())
            + f") con {down / 60:.0f} min de duración acumulada."
        )
        top_cause = causes.most_common(1)[0][0]
        out.recommendations.append(
            f"La causa más frecuente fue {top_cause}: priorizar su prevención antes de la "
            "próxima jornada o simulacro."
        )
    else:
        out.findings.append("No se registraron incidencias en el periodo.")
    if availability and availability.get("ratio") is not None:
        ratio = float(availability["ratio"])
        out.findings.append(
            f"La disponibilidad medida por el sondeo fue de {ratio:.4%} en {availability.get('month', '')} "
            f"({availability.get('failedProbes', 0)} de {availability.get('probes', 0)} sondeos fallidos)."
        )
        if ratio < 0.999:
            out.recommendations.append(
                f"La disponibilidad ({ratio:.3%}) quedó por debajo del 99.9 % que pide la "
                "convocatoria: añadir réplicas o nodos en otra zona."
            )
    else:
        out.lacking.append("medición de disponibilidad (sin sondeo registrado en el estado)")
    if night.sessions:
        seconds = [s.seconds for s in night.sessions]
        out.findings.append(
            f"Hubo {len(night.sessions):,} visitas de {night.visitors_exact:,} visitantes; el "
            f"tiempo medio de permanencia fue de {sum(seconds) / len(seconds) / 60:.1f} min "
            f"(mediana {percentile(seconds, 0.5) / 60:.1f} min)."
        )
    if night.hour_visitors:
        hour, best = max(night.hour_visitors.items(), key=lambda kv: kv[1].estimate)
        out.findings.append(
            f"La hora con más visitantes únicos empezó a las {_hhmm(hour, tz)} "
            f"(≈{best.estimate:,.0f})."
        )
    if not geo_known:
        out.lacking.append("geolocalización (no se indicó una base MaxMind con --geoip)")
        out.recommendations.append(
            "Entregar una base de datos MaxMind (GeoLite2/GeoIP2 City) al generar la memoria "
            "para la geolocalización por país y estado."
        )
    if night.malformed:
        out.findings.append(
            f"{night.malformed:,} líneas del registro no eran registros de acceso y se contaron aparte."
        )
    if not out.recommendations:
        out.recommendations.append(
            "Ninguna cifra rebasó los umbrales de revisión: conservar la configuración para la "
            "próxima jornada."
        )
    return out
