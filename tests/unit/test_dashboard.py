"""The Grafana dashboard's structure: provisioning-ready, every panel queries something, every
query goes through the datasource variable and names only known metrics. The live half (every
query returns data from a real Prometheus) is tests/integration/test_prometheus.py."""

from __future__ import annotations

from tests.support.dashboard import (
    expand,
    load_dashboard,
    metric_names,
    panels,
    queries,
    recording_rules,
)


def test_variables_datasource_and_host() -> None:
    dashboard = load_dashboard()
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    host = variables["host"]
    assert host["type"] == "query"
    assert host["datasource"]["uid"] == "${datasource}"
    assert host["includeAll"] and host["multi"] and host["allValue"] == ".*"
    assert dashboard["uid"] and "id" not in dashboard  # provisioning assigns the id


def test_every_panel_queries_through_the_datasource_variable() -> None:
    dashboard = load_dashboard()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            assert "$" not in expand(target["expr"]), target["expr"]


def test_per_host_panels_follow_the_host_variable() -> None:
    fleet_wide = {"job:ntp_server_received_packets:rate1m",
                  "job:ntp_server_accepted_packets:rate1m"}
    for query in queries(load_dashboard()):
        if metric_names(query.expr) <= fleet_wide:
            continue
        assert 'instance=~"$host"' in query.expr, query.expr


def test_heavy_expressions_come_from_recording_rules() -> None:
    """Traffic panels read recorded rates instead of summing raw counters at every refresh."""
    recorded = set(recording_rules())
    for query in queries(load_dashboard()):
        names = metric_names(query.expr)
        counters = {name for name in names if name.endswith("_total")}
        if counters:
            assert counters == {"pyresponder_worker_restarts_total"}, query.expr
        assert names, query.expr
        assert names & recorded or not any(name.startswith("ntp_server_") for name in names)


def test_metric_names_parser() -> None:
    expr = ('sum by (job, instance) (rate(ntp_server_accepted_packets_total{path="xdp"}[1m]))'
            " or 0 * instance:ntp_server_accepted_packets:rate1m")
    assert metric_names(expr) == {"ntp_server_accepted_packets_total",
                                  "instance:ntp_server_accepted_packets:rate1m"}
    assert metric_names('max by (a) (last_over_time(x_info{b=~"$host"}[5m])) > bool 1') == {
        "x_info"}
