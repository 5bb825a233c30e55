"""The chart's monitoring against the real thing: promtool, and a real Prometheus scraping a real leaf-serve.

* The ServiceMonitor, PrometheusRule and dashboard ConfigMap render only when switched on, carry the
  labels kube-prometheus-stack selects by, and the ServiceMonitor selects the serving Service's port.
* ``promtool check rules`` accepts the rendered rules; ``promtool test rules`` runs one case per alert that
  must fire and one that must stay silent (:data:`CASES`), and every alert the chart defines has both.
* Every alert has a summary, a description and a runbook_url whose section exists in docs/runbooks.md.
* A real Prometheus on loopback scrapes a real ``leaf-serve`` (one process, then ``--processes 2``) while
  traffic flows; every metric name the rules and the dashboard use must be among the scraped ones (or be
  a kube-state-metrics series, listed in :data:`KUBE_STATE_METRICS`), and every expression must parse in
  that Prometheus (``/api/v1/query``). A renamed metric breaks this test, not the pager.

Prometheus and promtool come from Debian's ``prometheus`` package (``scripts/get-prometheus.sh``, run by
``make test``); a machine without them fails here rather than skipping.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from test_chart import CHART, NAMESPACE, ROOT, by_kind, one, render

sys.path.insert(
    0, str(ROOT / "tests" / "serve")
)  # the serving tests' model builders and server launcher
from servekit import V1, Registry, free_port, wait_for  # noqa: E402
from test_serve_cli import leaf_serve  # noqa: E402
from test_serve_processes import BODY  # noqa: E402

SWITCHES = ("serviceMonitor", "prometheusRule", "dashboard")
ALL_ON = [a for s in SWITCHES for a in ("--set", f"monitoring.{s}.enabled=true")]
SERVER_JOB = (
    "leaf-leaf-train-serve"  # the serving Service's name: the job label the ServiceMonitor gives
)
CRONJOB = "leaf-leaf-train-train"
# The thresholds the unit tests are written against (not the defaults, so a default can change freely).
THRESHOLDS = {
    "retrainMissingHours": 24,
    "modelMaxAgeDays": 0.5,  # hours, not days, of samples to evaluate
    "notPromotedRuns": 2,
    "jobHistory": "30d",
    "errorRatio": 0.1,
    "latencyP99Seconds": 1,
    "sheddingRatio": 0.2,
    "captureDropsPerHour": 5,
}
# Series the retrain alerts read from kube-state-metrics, which this test does not run: exempt from the
# "scraped from leaf-serve" check, and named here one by one so nothing else slips through.
_SCRATCH = tempfile.mkdtemp(prefix="leaf-monitoring-values-")
KUBE_STATE_METRICS = {
    "kube_job_failed",
    "kube_job_created",
    "kube_job_labels",
    "kube_cronjob_created",
    "kube_cronjob_status_last_successful_time",
}


def prometheus_binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        pytest.fail(
            f"expected {name} (Debian's prometheus package) on PATH: run scripts/get-prometheus.sh"
        )
    return found


def rule_values(**overrides: Any) -> list[str]:
    """``-f`` of a values file with :data:`THRESHOLDS` (a file: ``--set`` passes decimals as strings)."""
    values = {"monitoring": {"prometheusRule": THRESHOLDS | overrides}}
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=_SCRATCH) as f:
        yaml.safe_dump(values, f)
    return ["-f", f.name]


@pytest.fixture(scope="module", autouse=True)
def _scratch_removed() -> Iterator[None]:
    """The values files of :func:`rule_values` go when the module's tests are done."""
    yield
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    return render(*ALL_ON, *rule_values())


@pytest.fixture(scope="module")
def rules(monitoring) -> dict[str, Any]:
    """The PrometheusRule's spec: a Prometheus rule file's content."""
    return one(monitoring, "PrometheusRule")["spec"]


def alerts_of(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}


def dashboard_of(objs: list[dict[str, Any]]) -> dict[str, Any]:
    (cm,) = [o for o in by_kind(objs, "ConfigMap") if "leaf-train.json" in o.get("data", {})]
    return json.loads(cm["data"]["leaf-train.json"])


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


# -- rendering -----------------------------------------------------------------------------------------------


def test_monitoring_is_off_by_default_and_each_switch_adds_its_object():
    kinds = {
        "serviceMonitor": "ServiceMonitor",
        "prometheusRule": "PrometheusRule",
        "dashboard": "ConfigMap",
    }
    default = render()
    assert not by_kind(default, "ServiceMonitor") and not by_kind(default, "PrometheusRule")
    for switch, kind in kinds.items():
        objs = render("--set", f"monitoring.{switch}.enabled=true")
        assert len(by_kind(objs, kind)) == len(by_kind(default, kind)) + 1, switch
        others = set(kinds.values()) - {kind, "ConfigMap"}
        assert not any(by_kind(objs, k) for k in others), switch


def test_kube_prometheus_stack_finds_every_object_by_its_labels(monitoring):
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(monitoring, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (cm,) = [o for o in by_kind(monitoring, "ConfigMap") if "leaf-train.json" in o.get("data", {})]
    assert (
        cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    )  # the Grafana sidecar's default label
    relabelled = render(*ALL_ON, "--set", "monitoring.labels.release=prom")
    assert one(relabelled, "ServiceMonitor")["metadata"]["labels"]["release"] == "prom"


def test_service_monitor_scrapes_the_serving_service_metrics_port(monitoring):
    monitor = one(monitoring, "ServiceMonitor")["spec"]
    service = one(monitoring, "Service", "serving")
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in {
        p["name"] for p in service["spec"]["ports"]
    }
    assert service["metadata"]["name"] == SERVER_JOB


def test_a_narrowed_network_policy_lets_prometheus_scrape():
    objs = render("-f", str(CHART / "ci" / "monitoring-values.yaml"))
    policy = one(objs, "NetworkPolicy", "serving")
    # /metrics is on the admin port (serving.service.adminPort): Prometheus is let in there, not to HTTP.
    (admin,) = [
        r for r in policy["spec"]["ingress"] if [p["port"] for p in r["ports"]] == ["admin"]
    ]
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    }
    assert prometheus in admin["from"]
    assert all(
        prometheus not in r.get("from", []) for r in policy["spec"]["ingress"] if r is not admin
    )
    monitor = one(objs, "ServiceMonitor", "serving")
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"


def test_every_alert_has_a_summary_description_and_a_runbook_section(rules):
    runbooks = (ROOT / "docs" / "runbooks.md").read_text()
    anchors = {
        re.sub(r"[^a-z0-9-]", "", h.strip().lower().replace(" ", "-"))
        for h in re.findall(r"^## (.+)$", runbooks, re.M)
    }
    alerts = alerts_of(rules)
    assert len(alerts) == 9
    for name, rule in alerts.items():
        notes = rule["annotations"]
        assert len(notes["summary"]) > 10 and len(notes["description"]) > 40, name
        url, anchor = notes["runbook_url"].split("#")
        assert url.endswith("/docs/runbooks.md") and anchor == name.lower() and anchor in anchors, (
            name
        )
        section = runbooks.split(f"## {name}\n", 1)[1].split("\n## ", 1)[0]
        assert (
            "look" in section.lower() and "do" in section.lower() and len(section.split()) > 60
        ), name


# -- promtool ------------------------------------------------------------------------------------------------

NS = f'namespace="{NAMESPACE}"'
SERVER = f'{NS}, job="{SERVER_JOB}"'
JOB = f'{NS}, job_name="{CRONJOB}'  # completed with the Job's suffix


def job_series(jobs: list[tuple[str, int, str]]) -> list[dict[str, str]]:
    """kube-state-metrics' series of Jobs as (suffix, creation time, outcome label)."""
    series = []
    for suffix, created, outcome in jobs:
        series.append({"series": f'kube_job_created{{{JOB}-{suffix}"}}', "values": f"{created}x60"})
        labels = f'{JOB}-{suffix}", label_leaf_train_io_outcome="{outcome}"'
        series.append({"series": f"kube_job_labels{{{labels}}}", "values": "1x60"})
    return series


# alert -> (series that must fire it, eval time, the firing alert's labels, series that must not, eval time)
CASES: dict[str, tuple[list[dict[str, str]], str, dict[str, str], list[dict[str, str]], str]] = {
    "LeafTrainJobFailed": (
        [{"series": f'kube_job_failed{{{JOB}-29", condition="true"}}', "values": "1x10"}],
        "5m",
        {"namespace": NAMESPACE, "job_name": f"{CRONJOB}-29"},
        [
            {"series": f'kube_job_failed{{{JOB}-29", condition="false"}}', "values": "1x10"},
            {
                "series": f'kube_job_failed{{{NS}, job_name="other-train-1", condition="true"}}',
                "values": "1x10",
            },
        ],
        "5m",
    ),
    "LeafTrainRetrainMissing": (
        [
            {
                "series": f'kube_cronjob_status_last_successful_time{{{NS}, cronjob="{CRONJOB}"}}',
                "values": "0x30",
            },
        ],
        "25h",
        {"namespace": NAMESPACE, "cronjob": CRONJOB},
        [
            {
                "series": f'kube_cronjob_status_last_successful_time{{{NS}, cronjob="{CRONJOB}"}}',
                "values": "72000x30",
            },
            {"series": f'kube_cronjob_created{{{NS}, cronjob="{CRONJOB}"}}', "values": "0x30"},
        ],
        "25h",
    ),
    "LeafTrainRetrainsNotPromoted": (
        job_series([("a", 100, "promoted"), ("b", 200, "rejected"), ("c", 300, "skipped")]),
        "30m",
        {"namespace": NAMESPACE},
        job_series([("a", 250, "promoted"), ("b", 200, "rejected"), ("c", 300, "skipped")]),
        "30m",
    ),
    "LeafServeModelStale": (
        [
            {
                "series": f'leaf_serve_model_trained_timestamp_seconds{{{SERVER}, pod="p1"}}',
                "values": "1x900",
            }
        ],
        "14h",
        {"namespace": NAMESPACE, "job": SERVER_JOB},
        [
            {
                "series": f'leaf_serve_model_trained_timestamp_seconds{{{SERVER}, pod="p1"}}',
                "values": "36000x900",
            },
            {
                "series": f'leaf_serve_model_trained_timestamp_seconds{{{SERVER}, pod="p2"}}',
                "values": "0x900",
            },
        ],
        "14h",
    ),
    "LeafServeErrors": (
        [
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="success"}}',
                "values": "0+60x30",
            },
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="server_error"}}',
                "values": "0+20x30",
            },
        ],
        "20m",
        {"namespace": NAMESPACE, "job": SERVER_JOB},
        [
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="success"}}',
                "values": "0+60x30",
            },
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="server_error"}}',
                "values": "0+1x30",
            },
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="unavailable"}}',
                "values": "0+60x30",
            },
        ],
        "20m",
    ),
    "LeafServeLatencyHigh": (
        [
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="0.5"}}',
                "values": "0+10x30",
            },
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="2.5"}}',
                "values": "0+100x30",
            },
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="+Inf"}}',
                "values": "0+100x30",
            },
        ],
        "20m",
        {"namespace": NAMESPACE, "job": SERVER_JOB, "endpoint": "classify"},
        [
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="0.5"}}',
                "values": "0+100x30",
            },
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="2.5"}}',
                "values": "0+100x30",
            },
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="classify", le="+Inf"}}',
                "values": "0+100x30",
            },
            # A slow page download is not what the alert is about.
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="page", le="2.5"}}',
                "values": "0x30",
            },
            {
                "series": f'leaf_serve_request_seconds_bucket{{{SERVER}, endpoint="page", le="+Inf"}}',
                "values": "0+100x30",
            },
        ],
        "20m",
    ),
    "LeafServeShedding": (
        [
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="success"}}',
                "values": "0+60x40",
            },
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="unavailable"}}',
                "values": "0+30x40",
            },
        ],
        "30m",
        {"namespace": NAMESPACE, "job": SERVER_JOB},
        [
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="success"}}',
                "values": "0+60x40",
            },
            {
                "series": f'leaf_serve_requests_total{{{SERVER}, endpoint="infer", outcome="unavailable"}}',
                "values": "0+5x40",
            },
        ],
        "30m",
    ),
    "LeafServeCaptureDropping": (
        [
            {
                "series": f'leaf_serve_captures_total{{{SERVER}, outcome="dropped_queue"}}',
                "values": "0+1x90",
            }
        ],
        "70m",
        {"namespace": NAMESPACE, "job": SERVER_JOB, "outcome": "dropped_queue"},
        [
            {
                "series": f'leaf_serve_captures_total{{{SERVER}, outcome="written"}}',
                "values": "0+10x90",
            },
            {
                "series": f'leaf_serve_captures_total{{{SERVER}, outcome="failed"}}',
                "values": "0+0.05x90",
            },
        ],
        "70m",
    ),
    "LeafServeReloadFailing": (
        [
            {
                "series": f'leaf_serve_reloads_total{{{SERVER}, outcome="rejected"}}',
                "values": "0 0 0 1x30",
            }
        ],
        "20m",
        {"namespace": NAMESPACE, "job": SERVER_JOB, "outcome": "rejected"},
        [
            {
                "series": f'leaf_serve_reloads_total{{{SERVER}, outcome="success"}}',
                "values": "0 0 0 1x30",
            },
            {
                "series": f'leaf_serve_reloads_total{{{SERVER}, outcome="rejected"}}',
                "values": "0x30",
            },
        ],
        "20m",
    ),
}


def unit_tests(alerts: dict[str, dict[str, Any]], names: list[str] | None = None) -> dict[str, Any]:
    """promtool's test file: per alert, it fires (an ALERTS series with exactly its labels) and stays silent.

    Series are sampled every minute, or every hour for an alert without ``for`` evaluated hours later
    (an alert with ``for`` must see its condition at every evaluation, hence samples within 5 minutes).
    The rules are evaluated as often as the series are sampled: the hourly cases go in a file of their
    own (evaluated every minute, one of them took promtool 3.5 of its 10 s).
    """
    tests = []
    for name in names or list(CASES):
        fire, fire_at, labels, quiet, quiet_at = CASES[name]
        interval = sample_interval(alerts, name)
        severity = alerts[name]["labels"]["severity"]
        firing = {"alertname": name, "alertstate": "firing", "severity": severity, **labels}
        shown = ", ".join(f'{k}="{v}"' for k, v in sorted(firing.items()))
        tests.append(
            {
                "name": f"{name} fires",
                "interval": interval,
                "input_series": fire,
                "promql_expr_test": [
                    {
                        "expr": f'ALERTS{{alertname="{name}", alertstate="firing"}}',
                        "eval_time": fire_at,
                        "exp_samples": [{"labels": f"ALERTS{{{shown}}}", "value": 1}],
                    }
                ],
            }
        )
        tests.append(
            {
                "name": f"{name} stays silent",
                "interval": interval,
                "input_series": quiet,
                "alert_rule_test": [{"eval_time": quiet_at, "alertname": name, "exp_alerts": []}],
            }
        )
    intervals = {t["interval"] for t in tests}
    assert len(intervals) == 1, f"expected cases sampled alike in one file; received {intervals}"
    return {"rule_files": ["rules.yaml"], "evaluation_interval": intervals.pop(), "tests": tests}


def sample_interval(alerts: dict[str, dict[str, Any]], name: str) -> str:
    return "1h" if CASES[name][1].endswith("h") and "for" not in alerts[name] else "1m"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [prometheus_binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120
    )


def test_promtool_accepts_the_rendered_rules(rules, tmp_path):
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    result = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 9 rules found" in result.stdout


def test_every_alert_fires_when_it_should_and_stays_silent_when_not(rules, tmp_path):
    alerts = alerts_of(rules)
    assert set(CASES) == set(alerts), "every alert needs a firing and a silent case"
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rules))
    by_interval: dict[str, list[str]] = {}
    for name in CASES:
        by_interval.setdefault(sample_interval(alerts, name), []).append(name)
    assert set(by_interval) == {"1m", "1h"}, by_interval
    for interval, names in by_interval.items():
        (tmp_path / f"tests-{interval}.yaml").write_text(yaml.safe_dump(unit_tests(alerts, names)))
        result = promtool("test", "rules", f"tests-{interval}.yaml", cwd=tmp_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_the_unit_tests_can_fail(rules, tmp_path):
    """A threshold moved past a firing case turns promtool red: the cases above really exercise the rules."""
    looser = one(
        render("--set", "monitoring.prometheusRule.enabled=true", *rule_values(errorRatio=0.5)),
        "PrometheusRule",
    )
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(looser["spec"]))
    (tmp_path / "tests.yaml").write_text(
        yaml.safe_dump(unit_tests(alerts_of(looser["spec"]), ["LeafServeErrors"]))
    )
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    out = result.stdout + result.stderr
    assert (
        result.returncode != 0 and "LeafServeErrors" in out and "got: nil" in out
    )  # the firing case failed


# -- metric names: a real Prometheus scraping a real leaf-serve ---------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects: identifiers that are not functions, labels or keywords."""
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", "{}", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "[]", text)  # ranges ([5m], [$__rate_interval])
    text = _GROUPING.sub(r"\1", text)
    names = set()
    for m in _IDENT.finditer(text):
        rest = text[m.end() :].lstrip()
        # a keyword, a function, or an aggregation (``sum by (x) (...)``)
        if m.group() in _KEYWORDS or rest.startswith("(") or re.match(r"(by|without)\b", rest):
            continue
        # the exponent of a number (2.5e+06), Inf, NaN, or a Grafana variable ($job)
        if m.group() in ("Inf", "NaN") or text[: m.start()][-1:] in set("0123456789.$"):
            continue
        names.add(m.group())
    return names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (endpoint, le) (rate(a_bucket{x="y{z}"}[$__rate_interval]))', {"a_bucket"}),
        ("time() - min(b > 0) > 2.5e+06 or on (namespace) c unless d", {"b", "c", "d"}),
        (
            "histogram_quantile(0.99, sum without (pod) (rate(e[5m]))) * on (job) group_left (version) f",
            {"e", "f"},
        ),
    ],
)
def test_metric_names_reads_promql(expr, names):
    assert metric_names(expr) == names


def exprs_in_use(objs: list[dict[str, Any]]) -> dict[str, str]:
    """Every expression of the rules and the dashboard, by where it is."""
    found = {
        f"rule {name}": r["expr"]
        for name, r in alerts_of(one(objs, "PrometheusRule")["spec"]).items()
    }
    for panel in dashboard_of(objs)["panels"]:
        for target in panel["targets"]:
            found[f"panel {panel['title']!r} {target['refId']}"] = target["expr"]
    return found


def test_the_names_checked_below_are_every_name_in_use(monitoring):
    used = {name for expr in exprs_in_use(monitoring).values() for name in metric_names(expr)}
    assert used >= KUBE_STATE_METRICS  # the exemption list names only series the rules really read
    assert {n for n in used if n.startswith("leaf_serve_")} == used - KUBE_STATE_METRICS


@pytest.fixture
def prometheus(tmp_path) -> Iterator[Any]:
    """Start a real Prometheus on loopback; ``start(target)`` scrapes ``target`` every second."""
    procs: list[subprocess.Popen[str]] = []

    def start(target: str) -> str:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [
                {
                    "job_name": SERVER_JOB,
                    "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE}}],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        proc = subprocess.Popen(
            [
                prometheus_binary("prometheus"),
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--storage.tsdb.retention.time=1h",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: _ready(url) or proc.poll() is not None, "Prometheus ready", timeout=60)
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        return url

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _ready(url: str) -> bool:
    try:
        return httpx.get(url + "/-/ready", timeout=1).status_code == 200
    except httpx.TransportError:
        return False


def query(prom: str, expr: str) -> dict[str, Any]:
    response = httpx.get(prom + "/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", (
        f"{expr}: {body.get('error')}"
    )
    return body["data"]


def grafana_to_promql(expr: str) -> str:
    """A dashboard expression as Grafana sends it, with its variables set to this test's server."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$namespace", NAMESPACE)
        .replace("$job", SERVER_JOB)
    )


@pytest.mark.parametrize("processes", [1, 2])
def test_a_real_prometheus_scrapes_every_metric_the_rules_and_the_dashboard_use(
    tmp_path, prometheus, processes
):
    local_registry = Registry(str(tmp_path / "models"))
    local_registry.publish("v1", V1)
    local_registry.promote("v1")
    objs = render(*ALL_ON)
    in_use = exprs_in_use(objs)
    with leaf_serve(
        model=local_registry.pointer_uri, processes=processes, drain_delay=0, capture="true"
    ) as (_, url):
        prom = prometheus(url.removeprefix("http://"))
        with httpx.Client() as client:
            for _ in range(20):
                assert client.post(url + "/v2/models/leaf/infer", json=BODY).status_code == 200
            assert client.get(url + "/v2/models/nope").status_code == 404
        scraped_up = f'up{{job="{SERVER_JOB}"}} == 1'
        wait_for(lambda: query(prom, scraped_up)["result"], "a successful scrape", timeout=60)
        # After the traffic: a scrape that has the infer requests counted.
        counted = f'leaf_serve_requests_total{{job="{SERVER_JOB}", endpoint="infer"}} >= 20'
        wait_for(
            lambda: query(prom, counted)["result"], "the requests counted in Prometheus", timeout=60
        )
        names = set(httpx.get(prom + "/api/v1/label/__name__/values", timeout=10).json()["data"])
        for where, expr in in_use.items():
            missing = metric_names(expr) - names - KUBE_STATE_METRICS
            assert not missing, (
                f"{where} uses {sorted(missing)}, which leaf-serve does not export: {expr}"
            )
            query(prom, grafana_to_promql(expr))  # parses and evaluates in the real Prometheus
        # The dashboard's panels show this server's data (its variables select it).
        model = query(
            prom,
            grafana_to_promql(
                'count by (version) (leaf_serve_model_info{namespace="$namespace", job="$job"} == 1)'
            ),
        )
        assert [r["metric"]["version"] for r in model["result"]] == ["v1"]
