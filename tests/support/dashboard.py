"""Read the Grafana dashboard and the Prometheus rules the way the tests and the docs' PNG need.

Grafana is not in Debian, so its queries are run against Prometheus directly: the dashboard's
template variables are replaced with plain values (every host, a fixed rate interval).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "monitoring" / "grafana-dashboard.json"
RULES = ROOT / "monitoring" / "pyresponder-rules.yml"

# Series Prometheus itself makes (alert state), not scraped from pyresponder.
PROMETHEUS_BUILTINS = {"ALERTS", "ALERTS_FOR_STATE", "up"}

_KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
             "group_right", "bool", "offset", "inf", "nan"}


@dataclass(frozen=True)
class Query:
    panel: str
    expr: str
    legend: str
    instant: bool


def load_dashboard(path: Path = DASHBOARD) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text())
    return dashboard


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel that shows data (rows are containers), including panels inside rows."""
    found = []
    for panel in dashboard["panels"]:
        if panel.get("type") == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def queries(dashboard: dict[str, Any]) -> list[Query]:
    return [
        Query(panel["title"], target["expr"], target.get("legendFormat", ""),
              bool(target.get("instant")))
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def expand(expr: str, host: str = ".*", rate_interval: str = "1m") -> str:
    """Replace Grafana's variables with what "All hosts" and a short rate interval would send."""
    return (expr.replace("${host}", host).replace("$host", host)
            .replace("$__rate_interval", rate_interval).replace("$__interval", rate_interval))


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (not functions, label names or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery durations
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        rest = text[match.end():].lstrip()
        if rest.startswith("(") or name.lower() in _KEYWORDS:
            continue  # a function call or an operator
        if re.fullmatch(r"\d+[smhdwy]", name):
            continue
        names.add(name)
    return names


def recording_rules(path: Path = RULES) -> dict[str, str]:
    """record name -> expression."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {
        str(rule["record"]): str(rule["expr"])
        for group in groups
        for rule in group["rules"]
        if "record" in rule
    }
