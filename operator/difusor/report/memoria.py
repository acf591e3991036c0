"""`difusor report`: the memoria técnica in Spanish, as HTML and PDF (WeasyPrint, matplotlib)."""

from __future__ import annotations

import base64
import html
import io
import zoneinfo
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from difusor.logic.analysis import (
    CutRow,
    Findings,
    IncidentRow,
    analyse,
    cut_rows,
    incident_rows,
    lag_figures,
)
from difusor.logic.stats import Night, geography, merge_night, percentile
from difusor.models import PrepPublicationSpec
from difusor.report.data import Evidence

#: Mexican states by their ISO 3166-2 code (as MaxMind gives them).
STATES = {
    "AGU": "Aguascalientes", "BCN": "Baja California", "BCS": "Baja California Sur",
    "CAM": "Campeche", "CHP": "Chiapas", "CHH": "Chihuahua", "CMX": "Ciudad de México",
    "COA": "Coahuila", "COL": "Colima", "DUR": "Durango", "GUA": "Guanajuato",
    "GRO": "Guerrero", "HID": "Hidalgo", "JAL": "Jalisco", "MEX": "Estado de México",
    "MIC": "Michoacán", "MOR": "Morelos", "NAY": "Nayarit", "NLE": "Nuevo León",
    "OAX": "Oaxaca", "PUE": "Puebla", "QUE": "Querétaro", "ROO": "Quintana Roo",
    "SLP": "San Luis Potosí", "SIN": "Sinaloa", "SON": "Sonora", "TAB": "Tabasco",
    "TAM": "Tamaulipas", "TLA": "Tlaxcala", "VER": "Veracruz", "YUC": "Yucatán",
    "ZAC": "Zacatecas",
}  # fmt: skip
TOP_PAGES = 20

CSS = """
@page { size: Letter; margin: 18mm 16mm 20mm 16mm;
        @bottom-center { content: "Memoria técnica — página " counter(page) " de " counter(pages);
                         font-family: "DejaVu Sans", sans-serif; font-size: 8pt; color: #555; } }
body { font-family: "DejaVu Sans", sans-serif; font-size: 9.5pt; color: #222; }
h1 { font-size: 20pt; color: #5b2c6f; margin-bottom: 2mm; }
h2 { font-size: 13pt; color: #5b2c6f; border-bottom: 1px solid #5b2c6f; margin-top: 7mm;
     break-after: avoid; }
h3 { font-size: 10.5pt; margin-top: 4mm; break-after: avoid; }
table { border-collapse: collapse; width: 100%; margin: 2mm 0 4mm 0; font-size: 8.5pt; }
th { background: #ece3f0; text-align: left; }
th, td { border: 0.5pt solid #bbb; padding: 1mm 1.5mm; vertical-align: top; }
td.n { text-align: right; white-space: nowrap; }
tr { break-inside: avoid; }
img.chart { width: 100%; margin: 1mm 0 3mm 0; }
p.note { font-size: 8.5pt; color: #555; }
.lacking { background: #fff4e5; border-left: 3pt solid #e67e22; padding: 2mm 3mm; }
"""


@dataclass
class Memoria:
    """The rendered memoria: HTML (charts inline) and the figures behind it."""

    html: str
    night: Night
    findings: Findings
    charts: int
    tables: int


def build(
    evidence: Evidence,
    *,
    start: datetime,
    end: datetime,
    geo: Callable[[int], tuple[str, str | None]] | None = None,
    geo_source: str | None = None,
    now: datetime,
) -> Memoria:
    """The memoria of [start, end) from what the API kept."""
    spec = PrepPublicationSpec.model_validate(evidence.publication.get("spec") or {})
    meta = evidence.publication["metadata"]
    status = evidence.publication.get("status") or {}
    tz = zoneinfo.ZoneInfo(spec.ingest.timezone)
    gap_ms = spec.statistics.session_timeout_minutes * 60_000
    night = merge_night(
        evidence.hours, start=int(start.timestamp()), end=int(end.timestamp()), gap_ms=gap_ms
    )
    cuts = cut_rows(evidence.cuts, start=start, end=end)
    incidents = (
        incident_rows(evidence.incidents, start=start, end=end)
        if evidence.incidents is not None
        else None
    )
    availability = status.get("availability")
    findings = analyse(
        night=night,
        cuts=cuts,
        incidents=incidents,
        availability=availability,
        geo_known=geo is not None,
        tz=tz,
    )
    doc = _Doc(tz)
    title = f"Memoria técnica del difusor {spec.host}"
    doc.raw(f"<h1>{_e(title)}</h1>")
    doc.p(
        f"Publicación {meta['namespace']}/{meta['name']} · periodo del "
        f"{_dt(start, tz)} al {_dt(end, tz)} ({spec.ingest.timezone}) · generada el "
        f"{_dt(now, tz)} por difusor a partir de los registros del clúster."
    )
    _summary(doc, night, cuts, incidents, availability, spec)
    _cuts_section(doc, cuts)
    _incidents_section(doc, incidents, availability)
    _traffic_section(doc, night, start, tz)
    _visitors_section(doc, night, tz)
    _pages_section(doc, night)
    _geo_section(doc, night, geo, geo_source)
    _attacks_section(doc, night, incidents, spec, status, tz)
    _conclusions(doc, findings, evidence)
    page = (
        '<!doctype html><html lang="es"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>"
        + "".join(doc.parts)
        + "</body></html>"
    )
    return Memoria(page, night, findings, doc.charts, doc.tables)


def write(memoria: Memoria, out_dir: Path, *, stem: str = "memoria-tecnica") -> tuple[Path, Path]:
    """Write `<stem>.html` and `<stem>.pdf` (WeasyPrint) into out_dir."""
    from weasyprint import HTML

    out_dir.mkdir(parents=True, exist_ok=True)
    html_path = out_dir / f"{stem}.html"
    pdf_path = out_dir / f"{stem}.pdf"
    html_path.write_text(memoria.html, encoding="utf-8")
    HTML(string=memoria.html, base_url=str(out_dir)).write_pdf(str(pdf_path))
    return html_path, pdf_path


# --- sections ------------------------------------------------------------------------------


def _summary(
    doc: _Doc,
    night: Night,
    cuts: Sequence[CutRow],
    incidents: Sequence[IncidentRow] | None,
    availability: dict[str, Any] | None,
    spec: PrepPublicationSpec,
) -> None:
    doc.h2("1. Resumen de la jornada")
    totals = night.totals
    seconds = [s.seconds for s in night.sessions]
    peak = max(night.minutes.items(), key=lambda kv: kv[1].requests, default=None)
    lag = lag_figures(cuts)
    rows = [
        ("Solicitudes atendidas", f"{totals.requests:,}"),
        ("Datos enviados", _bytes(totals.bytes)),
        ("Páginas consultadas (vistas)", f"{totals.page_views:,}"),
        ("Páginas distintas consultadas", f"{len(totals.pages):,}"),
        ("Consultas de actualización (main.json)", f"{totals.polls:,}"),
        ("Visitas (total de visitantes)", f"{len(night.sessions):,}"),
        (
            "Visitantes únicos",
            f"{night.visitors.estimate:,.0f} (IC 95 %: {night.visitors.lower:,.0f} a "
            f"{night.visitors.upper:,.0f}; exacto {night.visitors_exact:,})",
        ),
        (
            "Tiempo promedio de permanencia",
            _minutes(sum(seconds) / len(seconds)) if seconds else "—",
        ),
        (
            "Minuto de mayor carga",
            f"{_hm(peak[0], doc.tz)} · {peak[1].requests:,} solicitudes" if peak else "—",
        ),
        ("Solicitudes de robots", f"{totals.bots:,}"),
        ("Rechazos 429 (límite por cliente)", f"{totals.too_many:,}"),
        ("Cortes recibidos / publicados", f"{len(cuts)} / {lag.count}"),
        ("Retraso de publicación p50 / p95 / máx.", _lag(lag.count, lag.p50, lag.p95, lag.max)),
        (
            "Incidencias",
            "sin registro (PrepIncident no instalado)"
            if incidents is None
            else str(len(incidents)),
        ),
        (
            "Disponibilidad medida",
            f"{float(availability['ratio']):.4%}"
            if availability and availability.get("ratio") is not None
            else "sin medición",
        ),
        ("Réplicas web", str(spec.replicas)),
        ("Pods con estadísticas", str(night.pods)),
    ]
    doc.table(["Indicador", "Valor"], rows, numeric=(1,))


def _cuts_section(doc: _Doc, cuts: Sequence[CutRow]) -> None:
    doc.h2("2. Cronología de cortes")
    if not cuts:
        doc.lacking("No hay cortes (PrepCut) recibidos en el periodo.")
        return
    lag = lag_figures(cuts)
    doc.p(
        "Cada corte del Instituto: hora del corte, recepción completa por SFTP, verificación, "
        "en línea en todos los pods y purga de la CDN. El retraso se mide de la recepción a "
        f"«en línea en todos los pods». {_lag(lag.count, lag.p50, lag.p95, lag.max)}."
    )
    purged_known = any(c.purged for c in cuts)
    rows = [
        (
            c.id,
            c.phase + (f" ({c.reason})" if c.reason else ""),
            _t(c.time, doc.tz),
            _t(c.received, doc.tz),
            _t(c.verified, doc.tz),
            _t(c.live, doc.tz),
            _t(c.purged, doc.tz) if purged_known else "—",
            f"{c.lag_seconds:.0f} s" if c.lag_seconds is not None else "—",
        )
        for c in cuts
    ]
    doc.table(
        [
            "Corte",
            "Estado",
            "Hora del corte",
            "Recibido",
            "Verificado",
            "En línea",
            "Purgado",
            "Retraso",
        ],
        rows,
        numeric=(7,),
    )
    if not purged_known:
        doc.note("Los PrepCut no registran la hora de purga de la CDN (sin CDN o sin ese dato).")
    lagged = [c for c in cuts if c.lag_seconds is not None]
    if lagged:
        fig, ax = _fig(3.0)
        ax.bar([c.id[-4:] for c in lagged], [c.lag_seconds or 0 for c in lagged], color="#8e44ad")
        ax.set_ylabel("segundos")
        ax.set_title("Retraso de publicación por corte (recepción → en línea)")
        ax.tick_params(axis="x", labelrotation=90, labelsize=6)
        doc.chart(fig)


def _incidents_section(
    doc: _Doc, incidents: Sequence[IncidentRow] | None, availability: dict[str, Any] | None
) -> None:
    doc.h2("3. Disponibilidad e incidencias")
    if availability and availability.get("ratio") is not None:
        doc.p(
            f"Disponibilidad del mes {availability.get('month', '')}: "
            f"{float(availability['ratio']):.4%} ({availability.get('failedProbes', 0)} de "
            f"{availability.get('probes', 0)} sondeos fallidos). La convocatoria pide al menos 99.9 %."
        )
    else:
        doc.lacking(
            "El estado de la publicación no tiene medición de disponibilidad: el sondeo de "
            "disponibilidad no estaba en funcionamiento, por lo que esta memoria no puede "
            "acreditar el 99.9 % con datos propios."
        )
    if incidents is None:
        doc.lacking(
            "El clúster no tiene el recurso PrepIncident: no hubo registro automático de "
            "incidencias. Esta sección no puede listar interrupciones; las cifras de tráfico y "
            "los rechazos de las secciones 4 y 8 son la única evidencia disponible."
        )
        return
    if not incidents:
        doc.p("No se registraron incidencias en el periodo.")
        return
    rows = [
        (
            i.start.astimezone(doc.tz).strftime("%d/%m/%Y"),
            i.start.astimezone(doc.tz).strftime("%H:%M:%S"),
            _minutes(i.duration_seconds) if i.duration_seconds is not None else "en curso",
            f"{i.cause}: {i.root_cause}" if i.root_cause else i.cause,
            i.impact,
            i.mitigation,
        )
        for i in incidents
    ]
    doc.table(["Fecha", "Hora", "Duración", "Causa raíz", "Impacto", "Mitigación"], rows)


def _traffic_section(doc: _Doc, night: Night, start: datetime, tz: tzinfo) -> None:
    doc.h2("4. Tráfico por minuto")
    if not night.minutes:
        doc.lacking("Ningún agente envió estadísticas de acceso para el periodo.")
        return
    minutes = sorted(night.minutes)
    when = [datetime.fromtimestamp(m, tz) for m in minutes]
    fig, ax = _fig(3.4)
    ax.plot(when, [night.minutes[m].requests for m in minutes], lw=0.8, label="solicitudes")
    ax.plot(when, [night.minutes[m].page_views for m in minutes], lw=0.8, label="páginas vistas")
    ax.plot(
        when,
        [night.minutes[m].too_many for m in minutes],
        lw=0.8,
        label="rechazos 429",
        color="#c0392b",
    )
    for m in minutes:
        local = datetime.fromtimestamp(m, tz)
        if local.hour == 20 and local.minute == 0:
            ax.axvline(local, color="#888", ls="--", lw=0.8)
            ax.annotate("20:00", (local, ax.get_ylim()[1] * 0.9), fontsize=7, color="#555")
    ax.set_ylabel("por minuto")
    ax.set_title("Solicitudes, páginas vistas y rechazos por minuto")
    ax.legend(fontsize=7)
    _time_axis(ax, tz)
    doc.chart(fig)
    hours: dict[int, list[int]] = {}
    distinct: dict[int, set[str]] = {}
    for m, c in night.minutes.items():
        row = hours.setdefault(m // 3600 * 3600, [0, 0, 0, 0, 0, 0])
        row[0] += c.requests
        row[1] += c.page_views
        row[2] += c.polls
        row[3] += c.assets
        row[4] += c.bots
        row[5] += c.too_many
        distinct.setdefault(m // 3600 * 3600, set()).update(c.pages)
    doc.h3("Por hora")
    doc.table(
        [
            "Hora",
            "Solicitudes",
            "Páginas vistas",
            "Páginas distintas",
            "main.json",
            "Recursos",
            "Robots",
            "429",
        ],
        [
            (
                _hm(h, tz),
                f"{row[0]:,}",
                f"{row[1]:,}",
                f"{len(distinct[h]):,}",
                *(f"{v:,}" for v in row[2:]),
            )
            for h, row in sorted(hours.items())
        ],
        numeric=(1, 2, 3, 4, 5, 6, 7),
    )
    status = night.totals.status
    doc.h3("Códigos de respuesta")
    doc.table(
        ["Código", "Solicitudes", "Proporción"],
        [
            (str(code), f"{n:,}", f"{n / night.totals.requests:.2%}")
            for code, n in sorted(status.items())
        ],
        numeric=(1, 2),
    )


def _visitors_section(doc: _Doc, night: Night, tz: tzinfo) -> None:
    doc.h2("5. Visitantes únicos y permanencia")
    doc.p(
        "Un visitante es una dirección con su navegador (agente de usuario), sin robots y con al "
        "menos una respuesta exitosa. Los únicos se estiman con bosquejos HyperLogLog de Apache "
        "DataSketches que se combinan entre pods y horas (error estándar relativo 0.8 % por "
        "hora); una visita termina tras 30 minutos sin solicitudes, en cualquier pod. Detrás de "
        "una CDN, las páginas en caché no llegan al origen: esas cifras son cotas inferiores; "
        "main.json no se guarda en caché y marca la presencia de cada lector."
    )
    if night.hour_visitors:
        hours = sorted(night.hour_visitors)
        est = [night.hour_visitors[h].estimate for h in hours]
        err = [
            [e - night.hour_visitors[h].lower for h, e in zip(hours, est, strict=True)],
            [night.hour_visitors[h].upper - e for h, e in zip(hours, est, strict=True)],
        ]
        fig, ax = _fig(3.0)
        ax.bar([_hm(h, tz) for h in hours], est, yerr=err, color="#2980b9", capsize=2)
        ax.set_title("Visitantes únicos por hora (intervalo de confianza 95 %)")
        ax.tick_params(axis="x", labelrotation=90, labelsize=7)
        doc.chart(fig)
        doc.table(
            ["Hora", "Visitantes únicos", "IC 95 %"],
            [
                (
                    _hm(h, tz),
                    f"{night.hour_visitors[h].estimate:,.0f}",
                    f"{night.hour_visitors[h].lower:,.0f} a {night.hour_visitors[h].upper:,.0f}",
                )
                for h in hours
            ],
            numeric=(1, 2),
        )
    if night.sessions:
        seconds = [s.seconds for s in night.sessions]
        pages = [s.pages for s in night.sessions]
        doc.table(
            ["Visitas", "Promedio", "Mediana", "p90", "Máximo", "Páginas por visita"],
            [
                (
                    f"{len(seconds):,}",
                    _minutes(sum(seconds) / len(seconds)),
                    _minutes(percentile(seconds, 0.5)),
                    _minutes(percentile(seconds, 0.9)),
                    _minutes(max(seconds)),
                    f"{sum(pages) / len(pages):.1f}",
                )
            ],
            numeric=(0, 1, 2, 3, 4, 5),
        )
        fig, ax = _fig(2.6)
        ax.hist([s / 60 for s in seconds], bins=40, color="#16a085")
        ax.set_xlabel("minutos en el sitio")
        ax.set_ylabel("visitas")
        ax.set_title("Distribución del tiempo de permanencia")
        doc.chart(fig)


def _pages_section(doc: _Doc, night: Night) -> None:
    doc.h2("6. Páginas más consultadas")
    pages = night.totals.pages
    if not pages:
        doc.lacking("No hubo páginas vistas en el periodo.")
        return
    total = sum(pages.values())
    doc.p(
        f"{len(pages):,} páginas y vistas distintas; una página es un HTML o una vista del sitio "
        "(cada JSON que abre el lector bajo las rutas de vista configuradas)."
    )
    doc.table(
        ["#", "Página", "Vistas", "Proporción"],
        [
            (str(i), path, f"{n:,}", f"{n / total:.1%}")
            for i, (path, n) in enumerate(pages.most_common(TOP_PAGES), 1)
        ],
        numeric=(2, 3),
    )


def _geo_section(
    doc: _Doc,
    night: Night,
    geo: Callable[[int], tuple[str, str | None]] | None,
    source: str | None,
) -> None:
    doc.h2("7. Geolocalización de los visitantes")
    if geo is None:
        doc.lacking(
            "No se indicó una base de datos MaxMind (--geoip): no hay geolocalización. Los "
            "agentes guardan la red de cada lector (/24 o /48), así que basta con volver a "
            "generar la memoria con la base."
        )
        return
    places = geography(night.sessions, geo)
    doc.p(f"Fuente: {source or 'base MaxMind'}; por red /24 (IPv4) o /48 (IPv6) de cada visitante.")
    countries: Counter[str] = Counter()
    states: Counter[str] = Counter()
    for (country, state), (visitors, _sessions) in places.items():
        countries[country] += visitors
        if country == "MX":
            states[STATES.get(state or "", state or "sin estado")] += visitors
    total = sum(countries.values()) or 1
    doc.h3("Por país")
    doc.table(
        ["País", "Visitantes", "Proporción"],
        [(c, f"{n:,}", f"{n / total:.1%}") for c, n in countries.most_common(15)],
        numeric=(1, 2),
    )
    if states:
        doc.h3("México, por entidad federativa")
        mx = sum(states.values())
        doc.table(
            ["Entidad", "Visitantes", "Proporción en México"],
            [(s, f"{n:,}", f"{n / mx:.1%}") for s, n in states.most_common()],
            numeric=(1, 2),
        )
        top = states.most_common(12)[::-1]
        fig, ax = _fig(3.0)
        ax.barh([s for s, _ in top], [n for _, n in top], color="#d35400")
        ax.set_title("Visitantes por entidad federativa")
        ax.tick_params(axis="y", labelsize=7)
        doc.chart(fig)


def _attacks_section(
    doc: _Doc,
    night: Night,
    incidents: Sequence[IncidentRow] | None,
    spec: PrepPublicationSpec,
    status: dict[str, Any],
    tz: tzinfo,
) -> None:
    doc.h2("8. Ataques detectados y contención")
    rate = spec.rate_limit
    doc.p(
        f"Contención en cada pod: límite por cliente de {rate.requests_per_second} solicitudes/s "
        f"(ráfaga {rate.burst}) y {rate.connections} conexiones, respondido con 429; "
        f"{len(rate.deny_list)} rangos en la lista de bloqueo fija (403)."
    )
    worst = sorted(
        ((m, c) for m, c in night.minutes.items() if c.too_many or c.status.get(403)),
        key=lambda mc: -(mc[1].too_many + mc[1].status.get(403, 0)),
    )[:10]
    if worst:
        doc.table(
            ["Minuto", "Solicitudes", "429", "403", "Proporción rechazada"],
            [
                (
                    _hm(m, tz),
                    f"{c.requests:,}",
                    f"{c.too_many:,}",
                    f"{c.status.get(403, 0):,}",
                    f"{(c.too_many + c.status.get(403, 0)) / c.requests:.1%}",
                )
                for m, c in worst
            ],
            numeric=(1, 2, 3, 4),
        )
    else:
        doc.p("Ningún minuto tuvo rechazos: no se detectó tráfico abusivo en el origen.")
    denied = ((status.get("containment") or {}).get("denied")) or []
    if denied:
        doc.table(
            ["Rango bloqueado", "Desde", "Hasta", "Evidencia"],
            [
                (d.get("cidr", ""), d.get("since", ""), d.get("expiresAt", ""), d.get("reason", ""))
                for d in denied
            ],
        )
    attacks = [i for i in incidents or [] if i.cause == "Attack"]
    if attacks:
        doc.p(f"{len(attacks)} incidencias por ataque; su mitigación figura en la sección 3.")
    elif incidents is None:
        doc.note("Sin registro de incidencias, los ataques se muestran solo por sus rechazos.")


def _conclusions(doc: _Doc, findings: Findings, evidence: Evidence) -> None:
    doc.h2("9. Análisis y conclusiones")
    doc.h3("Hallazgos")
    doc.ul(findings.findings)
    doc.h3("Recomendaciones")
    doc.ul(findings.recommendations)
    lacking = list(findings.lacking)
    lacking += [f"estadísticas ilegibles: {u}" for u in evidence.unreadable]
    if lacking:
        doc.h3("Lo que esta memoria no pudo medir")
        doc.ul(lacking)


# --- helpers -------------------------------------------------------------------------------


class _Doc:
    def __init__(self, tz: tzinfo) -> None:
        self.tz = tz
        self.parts: list[str] = []
        self.charts = 0
        self.tables = 0

    def raw(self, text: str) -> None:
        self.parts.append(text)

    def h2(self, text: str) -> None:
        self.parts.append(f"<h2>{_e(text)}</h2>")

    def h3(self, text: str) -> None:
        self.parts.append(f"<h3>{_e(text)}</h3>")

    def p(self, text: str) -> None:
        self.parts.append(f"<p>{_e(text)}</p>")

    def note(self, text: str) -> None:
        self.parts.append(f'<p class="note">{_e(text)}</p>')

    def lacking(self, text: str) -> None:
        self.parts.append(f'<p class="lacking">{_e(text)}</p>')

    def ul(self, items: Sequence[str]) -> None:
        self.parts.append("<ul>" + "".join(f"<li>{_e(i)}</li>" for i in items) + "</ul>")

    def table(
        self, headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = ()
    ) -> None:
        self.tables += 1
        head = "".join(f"<th>{_e(h)}</th>" for h in headers)
        body = "".join(
            "<tr>"
            + "".join(
                f'<td class="n">{_e(v)}</td>' if i in numeric else f"<td>{_e(v)}</td>"
                for i, v in enumerate(row)
            )
            + "</tr>"
            for row in rows
        )
        self.parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def chart(self, fig: Figure) -> None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=130, bbox_inches="tight")
        plt.close(fig)
        data = base64.b64encode(buf.getvalue()).decode()
        self.charts += 1
        self.parts.append(f'<img class="chart" alt="gráfica" src="data:image/png;base64,{data}">')


def _fig(height: float) -> tuple[Figure, Any]:
    fig, ax = plt.subplots(figsize=(7.5, height))
    ax.grid(alpha=0.3)
    return fig, ax


def _time_axis(ax: Any, tz: tzinfo) -> None:
    import matplotlib.dates as mdates

    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=tz))  # type: ignore[no-untyped-call]
    ax.tick_params(axis="x", labelsize=7)


def _e(value: object) -> str:
    return html.escape(str(value))


def _dt(value: datetime, tz: tzinfo) -> str:
    return value.astimezone(tz).strftime("%d/%m/%Y %H:%M")


def _t(value: datetime | None, tz: tzinfo) -> str:
    return value.astimezone(tz).strftime("%d/%m %H:%M:%S") if value else "—"


def _hm(epoch: int, tz: tzinfo) -> str:
    return datetime.fromtimestamp(epoch, UTC).astimezone(tz).strftime("%d/%m %H:%M")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def _lag(count: int, p50: float, p95: float, worst: float) -> str:
    if not count:
        return "sin cortes publicados"
    return f"p50 {p50:.0f} s · p95 {p95:.0f} s · máx. {worst:.0f} s"


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:,.1f} {unit}"
        value /= 1024
    return f"{n} B"
