"""The leaf-train chart, rendered by the real helm with every ci/*.yaml value set.

Each rendered object is validated against the Kubernetes OpenAPI schemas (kubernetes-validate,
strict: unknown fields fail) for the oldest and newest Kubernetes the chart targets; a policy
scan (checkov) must pass with only the skips the chart documents. helm comes from
scripts/get-helm.sh (``make test`` provides it), checkov from its own venv in .tools/.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from testkit import load_manifests

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "leaf-train"
VALUE_SETS = sorted(p.name for p in (CHART / "ci").glob("*.yaml"))
NAMESPACE = "leaf-train"
KUBE_VERSIONS = ("1.31", "1.35")  # the chart's kubeVersion floor and a current release
OPERATOR_API = (
    "monitoring.coreos.com/"  # the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule)
)
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
JOB_EXIT_CODES = {"config": 2, "data": 3, "preempted": 75}  # leaf_train/errors.py
# The chart has no default image repositories (users push what `make images` builds): every render sets them.
IMAGES = (
    "--set", "training.image.registry=registry.example.com", "--set", "training.image.repository=leaf-train-job",
    "--set", "serving.image.registry=registry.example.com", "--set", "serving.image.repository=leaf-serve",
)  # fmt: skip


def helm_binary() -> str:
    path = ROOT / ".tools" / "bin" / "helm"
    found = str(path) if path.exists() else shutil.which("helm")
    if not found:
        pytest.fail(
            "expected helm in .tools/bin (run scripts/get-helm.sh or make test) or on PATH; found none"
        )
    return found


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_binary(), *args], capture_output=True, text=True, check=check, timeout=120
    )


def render(*args: str) -> list[dict[str, Any]]:
    """``helm template`` -> the list of objects (hooks and tests included)."""
    out = helm(
        "template", "leaf", str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.31.0", *IMAGES, *args
    ).stdout  # fmt: skip
    return load_manifests(out)


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in by_kind(objs, kind)
        if component is None
        or o["metadata"]["labels"].get("app.kubernetes.io/component") == component
    ]
    assert len(found) == 1, f"expected one {kind} ({component}); found {len(found)}"
    return found[0]


def pod_specs(objs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(kind/name, pod spec) of every workload."""
    specs = []
    for o in objs:
        name = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] == "CronJob":
            specs.append((name, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]))
        elif o["kind"] in ("Job", "Deployment"):
            specs.append((name, o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            specs.append((name, o["spec"]))
    return specs


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.fixture(scope="session")
def renders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every ci value set rendered once per session."""
    return {name: render("-f", str(CHART / "ci" / name)) for name in VALUE_SETS}


def test_value_sets_cover_the_required_scenarios():
    assert {
        "default-values.yaml",
        "cpu-only-values.yaml",
        "gpu-serving-values.yaml",
        "no-cronjob-values.yaml",
        "existing-secret-values.yaml",
        "minio-values.yaml",
    } <= set(VALUE_SETS)


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_strict(values):
    result = helm(
        "lint",
        str(CHART),
        "--strict",
        "--namespace",
        NAMESPACE,
        "-f",
        str(CHART / "ci" / values),
        *IMAGES,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("values", VALUE_SETS)
@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
def test_every_object_matches_the_kubernetes_openapi_schema(renders, values, kube_version):
    objs = renders[values]
    assert objs, "nothing rendered"
    for obj in objs:
        if obj["apiVersion"].startswith(
            OPERATOR_API
        ):  # no offline schema: tests/charts/test_monitoring.py checks them
            continue
        try:
            kubernetes_validate.validate(obj, kube_version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            pytest.fail(f"{values}: {obj['kind']}/{obj['metadata']['name']}: {path}: {e.message}")


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--set", "surprise=1"], "additional properties 'surprise' not allowed"),
        (["--set", "training.gpu.cuont=1"], "additional properties 'cuont' not allowed"),
        (["--set", "serving.replicaCount=two"], "got string, want integer"),
        (["--set", "training.cronJob.concurrencyPolicy=Allow"], "concurrencyPolicy"),
        (["--set", "training.config.mixedPrecision=fast"], "mixedPrecision"),
        (["--set", "training.config.skipIfUnchanged=sometimes"], "skipIfUnchanged"),
        (["--set", "training.config.minNewImages=0"], "minNewImages"),
        (["--set", "training.config.maxClassRegression=1.5"], "maxClassRegression"),
        (["--set", "s3.endpoint=minio:9000"], "endpoint"),
        (["--set-string", "serving.service.port=80"], "got string, want integer"),
        (["--set", "s3.output=leaf-models"], "output"),
    ],
)
def test_schema_rejects_unknown_keys_and_wrong_types(args, error):
    result = helm("template", "leaf", str(CHART), *IMAGES, *args, check=False)
    assert result.returncode != 0
    assert error in result.stderr


@pytest.mark.parametrize(
    ("args", "missing"),
    [
        ([], "training.image.repository and serving.image.repository"),
        (["--set", "training.image.repository=leaf-train-job"], "serving.image.repository"),
        (["--set", "serving.image.repository=leaf-serve"], "training.image.repository"),
        (
            [
                "--set",
                "serving.image.repository=leaf-serve",
                "--set",
                "training.cronJob.enabled=false",
            ],
            None,
        ),
    ],
)
def test_install_without_image_repositories_fails_with_one_line_naming_them(args, missing):
    """No ImagePullBackOff from placeholder images: the install stops and says which values to set."""
    result = helm(
        "install",
        "leaf",
        str(CHART),
        "--dry-run=client",
        "--namespace",
        NAMESPACE,
        *args,
        check=False,
    )
    if missing is None:  # no CronJob and no install-time Job: the training image is not needed
        assert result.returncode == 0, result.stderr
        return
    assert result.returncode != 0
    (line,) = result.stderr.strip().splitlines()
    assert f"set {missing} (and *.image.registry)" in line and "make images" in line, line


def test_image_reference_with_and_without_registry():
    pod = one(render(), "Deployment")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "registry.example.com/leaf-serve:0.1.0"
    objs = render(
        "--set",
        "serving.image.registry=",
        "--set",
        "serving.image.repository=ghcr.io/me/leaf-serve",
    )
    (container,) = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "ghcr.io/me/leaf-serve:0.1.0"


def test_training_cronjob(renders):
    cron = one(renders["default-values.yaml"], "CronJob")
    spec = cron["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert spec["timeZone"] == "Etc/UTC"
    assert spec["startingDeadlineSeconds"] > 0
    assert spec["successfulJobsHistoryLimit"] >= 1 and spec["failedJobsHistoryLimit"] >= 1
    job = spec["jobTemplate"]["spec"]
    for field in ("backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        assert isinstance(job[field], int), field
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_pod_failure_policy_follows_the_job_exit_codes(renders):
    rules = one(renders["default-values.yaml"], "CronJob")["spec"]["jobTemplate"]["spec"][
        "podFailurePolicy"
    ]["rules"]
    assert {
        "action": "Ignore",
        "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}],
    } in rules
    by_action = {r["action"]: r["onExitCodes"] for r in rules if "onExitCodes" in r}
    assert by_action["FailJob"] == {
        "containerName": "train",
        "operator": "In",
        "values": [JOB_EXIT_CODES["config"], JOB_EXIT_CODES["data"]],
    }
    assert by_action["Ignore"]["values"] == [JOB_EXIT_CODES["preempted"]]
    from leaf_train import errors

    assert tuple(JOB_EXIT_CODES.values()) == (
        errors.EXIT_CONFIG,
        errors.EXIT_DATA,
        errors.EXIT_PREEMPTED,
    )


def test_training_pod_gpu_placement_and_run_id(renders):
    pod = one(renders["default-values.yaml"], "CronJob")["spec"]["jobTemplate"]["spec"]["template"][
        "spec"
    ]
    (c,) = pod["containers"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
        "tolerations"
    ]
    env = env_of(c)
    job_name = {"fieldRef": {"fieldPath": "metadata.labels['batch.kubernetes.io/job-name']"}}
    assert env["LEAF_TRAIN_RUN_ID"] == job_name and env["LEAF_TRAIN_JOB_NAME"] == job_name
    assert env["LEAF_TRAIN_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The schedule's runs are told so (the retrain policy's auto skips only those); see test_kube_commands for submit.
    assert env["LEAF_TRAIN_RUN_TRIGGER"] == "scheduled"
    cpu = one(renders["cpu-only-values.yaml"], "CronJob")["spec"]["jobTemplate"]["spec"][
        "template"
    ]["spec"]
    assert "nvidia.com/gpu" not in json.dumps(cpu["containers"][0]["resources"])


def test_training_config_reaches_the_job_as_leaf_train_env(renders):
    cm = one(renders["default-values.yaml"], "ConfigMap", "training")["data"]
    assert cm["LEAF_TRAIN_DATA"] == "s3://leaf-data/leaves"
    assert cm["LEAF_TRAIN_OUTPUT"] == "s3://leaf-models/registry"
    assert cm["LEAF_TRAIN_IMAGE_SIZE"] == "150" and cm["LEAF_TRAIN_FINETUNE_EPOCHS"] == "100"
    assert "LEAF_TRAIN_MIN_ACCURACY" not in cm  # null = the job's own default
    assert (
        "LEAF_TRAIN_SKIP_IF_UNCHANGED" not in cm
    )  # null = auto: scheduled runs skip when nothing changed
    objs = render(
        *("--set", "training.config.minAccuracy=0.85", "--set", "training.config.keepVersions=5"),
        *(
            "--set",
            "training.config.maxClassRegression=0.1",
            "--set",
            "training.config.gateMinClassSupport=30",
        ),
        *(
            "--set",
            "training.config.skipIfUnchanged=on",
            "--set",
            "training.config.minNewImages=50",
        ),
        *("--set", "training.config.incompleteGraceHours=36"),
    )
    cm = one(objs, "ConfigMap", "training")["data"]
    assert (cm["LEAF_TRAIN_MIN_ACCURACY"], cm["LEAF_TRAIN_KEEP_VERSIONS"]) == ("0.85", "5")
    assert (cm["LEAF_TRAIN_MAX_CLASS_REGRESSION"], cm["LEAF_TRAIN_GATE_MIN_CLASS_SUPPORT"]) == (
        "0.1",
        "30",
    )
    assert (cm["LEAF_TRAIN_SKIP_IF_UNCHANGED"], cm["LEAF_TRAIN_MIN_NEW_IMAGES"]) == ("on", "50")
    assert cm["LEAF_TRAIN_INCOMPLETE_GRACE_HOURS"] == "36"
    # Every LEAF_TRAIN_* key must be an option of `leaf-train train` (a typo would be silently ignored).
    from leaf_train.commands.train import _components

    known = {f.upper() for _, cls in _components() for f in cls.__dataclass_fields__}
    unknown = [k for k in cm if k.removeprefix("LEAF_TRAIN_") not in known]
    assert unknown == []
    # ... and the job reads each one as the value the chart meant.
    from leaf_common.config import resolve
    from leaf_train.freshness import RetrainConfig
    from leaf_train.gate import GateConfig

    gate, retrain = (resolve(cls, "LEAF_TRAIN_", environ=cm) for cls in (GateConfig, RetrainConfig))
    assert (gate.max_class_regression, gate.gate_min_class_support) == (0.1, 30)
    assert (retrain.skip_if_unchanged, retrain.min_new_images) == ("on", 50)


def test_serving_deployment(renders):
    objs = renders["default-values.yaml"]
    dep = one(objs, "Deployment")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8081, "protocol": "TCP"},
        {"name": "admin", "containerPort": 8082, "protocol": "TCP"},
    ]
    assert dep["spec"]["strategy"]["type"] == "RollingUpdate"
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    assert dep["spec"]["template"]["spec"]["automountServiceAccountToken"] is False
    cm = one(objs, "ConfigMap", "serving")["data"]
    assert cm["LEAF_SERVE_MODEL"] == "s3://leaf-models/registry/leaf-classifier/latest.json"
    assert cm["LEAF_SERVE_PORT"] == "8080" and cm["LEAF_SERVE_PROVIDERS"] == "CPUExecutionProvider"
    svc = one(objs, "Service")
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert [(p["name"], p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [
        ("http", 80, "http"),
        ("grpc", 8081, "grpc"),
        ("admin", 9090, "admin"),
    ]
    assert (cm["LEAF_SERVE_GRPC_PORT"], cm["LEAF_SERVE_ADMIN_PORT"]) == ("8081", "8082")
    # gRPC off: no container port, no Service port, the server told so.
    off = render("--set", "serving.service.grpcPort=0", "--set", "serving.service.adminPort=0")
    assert [p["name"] for p in one(off, "Service")["spec"]["ports"]] == ["http"]
    assert [
        p["name"]
        for p in one(off, "Deployment")["spec"]["template"]["spec"]["containers"][0]["ports"]
    ] == ["http"]
    assert one(off, "ConfigMap", "serving")["data"]["LEAF_SERVE_GRPC_PORT"] == "0"
    assert one(off, "ConfigMap", "serving")["data"]["LEAF_SERVE_ADMIN_PORT"] == "0"
    assert one(objs, "PodDisruptionBudget")["spec"]["selector"] == dep["spec"]["selector"]
    assert by_kind(objs, "HorizontalPodAutoscaler") == []


def test_serving_limits_reach_the_server_and_every_key_is_an_option(renders):
    cm = one(renders["default-values.yaml"], "ConfigMap", "serving")["data"]
    # On by default (issue #10): connections bounded, a drain window at SIGTERM.
    assert (cm["LEAF_SERVE_MAX_CONCURRENCY"], cm["LEAF_SERVE_DRAIN_DELAY"]) == ("256", "5")
    assert (
        "LEAF_SERVE_PROCESSES" not in cm
    )  # one process unless asked (each worker holds its own model)
    objs = render(
        "--set", "serving.config.headerTimeout=10", "--set", "serving.config.maxDecodeBytes=1000000",
        "--set", "serving.config.processes=4",
    )  # fmt: skip
    cm = one(objs, "ConfigMap", "serving")["data"]
    assert (cm["LEAF_SERVE_HEADER_TIMEOUT"], cm["LEAF_SERVE_MAX_DECODE_BYTES"]) == ("10", "1000000")
    assert cm["LEAF_SERVE_PROCESSES"] == "4"
    from leaf_serve.settings import ServeConfig

    known = {f.upper() for f in ServeConfig.__dataclass_fields__}
    assert [k for k in cm if k.removeprefix("LEAF_SERVE_") not in known] == []
    # ServeConfig.validate accepts what the chart renders (the server would refuse to start otherwise).
    from leaf_common.config import resolve
    from leaf_serve.settings import ENV_PREFIX

    assert resolve(ServeConfig, ENV_PREFIX, {}, environ=cm).max_decode_bytes == 1_000_000


@pytest.mark.parametrize(
    ("args", "total"),
    [
        (["--set", "serving.config.drainDelay=25"], "(35)"),
        (["--set", "serving.terminationGracePeriodSeconds=15"], "(15)"),
    ],
)
def test_termination_grace_must_cover_the_drain_window_and_grace_period(args, total):
    result = helm(
        "template",
        "leaf",
        str(CHART),
        *IMAGES,
        "-f",
        str(CHART / "ci" / "default-values.yaml"),
        *args,
        check=False,
    )
    assert result.returncode != 0
    assert (
        "must exceed serving.config.drainDelay + serving.config.gracePeriod " + total
        in result.stderr
    )


def test_capture_and_review_reach_the_server_with_the_token_as_a_file(renders, tmp_path):
    objs = renders["capture-review-values.yaml"]
    cm = one(objs, "ConfigMap", "serving")["data"]
    assert (cm["LEAF_SERVE_CAPTURE"], cm["LEAF_SERVE_CAPTURE_PER_MINUTE"]) == ("true", "20")
    assert "LEAF_SERVE_CAPTURE_QUEUE_BYTES" not in cm  # null: the server's default
    assert (cm["LEAF_SERVE_CONFIDENCE_THRESHOLD"], cm["LEAF_SERVE_DATA"]) == (
        "0.6",
        "s3://leaf-data/leaves",
    )
    spec = one(objs, "Deployment")["spec"]["template"]["spec"]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "review-token"]
    assert volume["secret"] == {
        "secretName": "leaf-review",
        "defaultMode": 0o440,  # readable by the pod's fsGroup, not the world
        "items": [{"key": "token", "path": "token"}],
    }
    (c,) = spec["containers"]
    (mount,) = [m for m in c["volumeMounts"] if m["name"] == "review-token"]
    assert (
        mount["readOnly"] is True
        and cm["LEAF_SERVE_REVIEW_TOKEN_FILE"] == mount["mountPath"] + "/token"
    )
    assert [
        e["name"] for e in c["env"] if "TOKEN" in e["name"]
    ] == []  # a file, never an environment variable
    assert by_kind(objs, "Secret") == []  # referenced, never created with a value
    # The server starts with what the chart renders (the Secret's file stands in at a temporary path).
    from leaf_common.config import resolve
    from leaf_serve.settings import ENV_PREFIX, ServeConfig

    (tmp_path / "token").write_text(
        "3f9a1c2b7d5e8f0146ab" * 2
    )  # random enough: the server refuses "t" * 32
    config = resolve(
        ServeConfig,
        ENV_PREFIX,
        {},
        environ={**cm, "LEAF_SERVE_REVIEW_TOKEN_FILE": str(tmp_path / "token")},
    )
    assert config.capture and config.inbox_uri == "s3://leaf-models/registry/leaf-classifier/inbox"
    assert (
        config.capture_per_client_per_minute,
        config.inbox_max_files,
        config.review_failed_logins,
    ) == (4, 1000, 5)
    assert (config.client_address_header, config.admin_port) == ("X-Forwarded-For", 8082)
    assert config.card_dataset_name == "PlantVillage tomato 2026"
    default = one(renders["default-values.yaml"], "ConfigMap", "serving")["data"]
    assert [
        k for k in default if "CAPTURE" in k or "REVIEW" in k or k == "LEAF_SERVE_DATA"
    ] == []  # off by default


def test_admin_port_and_storage_egress_narrow_to_what_the_user_names(renders):
    serving = one(renders["capture-review-values.yaml"], "NetworkPolicy", "serving")
    assert serving["spec"]["ingress"][1]["from"] == [
        {"podSelector": {}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    assert egress_ports(serving)[443] == [
        {"ipBlock": {"cidr": "52.216.0.0/15"}}
    ]  # not 443 to anywhere
    dns = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}]
    narrowed = render("--set-json", "networkPolicy.dnsTo=" + json.dumps(dns))
    assert egress_ports(one(narrowed, "NetworkPolicy", "serving"))[53] == dns


def test_review_needs_an_existing_secret():
    result = helm(
        "template", "leaf", str(CHART), *IMAGES, "--set", "serving.review.enabled=true", check=False
    )
    assert result.returncode != 0
    assert "serving.review.enabled needs serving.review.existingSecret" in result.stderr


def test_gpu_serving(renders):
    objs = renders["gpu-serving-values.yaml"]
    dep = one(objs, "Deployment")
    c = dep["spec"]["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    cm = one(objs, "ConfigMap", "serving")["data"]
    assert cm["LEAF_SERVE_PROVIDERS"] == "CUDAExecutionProvider,CPUExecutionProvider"
    assert cm["LEAF_SERVE_REQUIRE_GPU"] == "true"
    hpa = one(objs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"]
    assert "replicas" not in dep["spec"]  # the HPA owns it


@pytest.mark.parametrize("values", VALUE_SETS)
def test_pod_security_standard_restricted(renders, values):
    for name, spec in pod_specs(renders[values]):
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"] == {"drop": ["ALL"]}, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["runAsUser"] > 10000, name


@pytest.mark.parametrize("values", VALUE_SETS)
def test_writable_paths_are_emptydir_mounts(renders, values):
    """readOnlyRootFilesystem holds only if every path the programs write is a mounted emptyDir."""
    for name, spec in pod_specs(renders[values]):
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in spec["containers"]:
            mounts = {
                m["mountPath"]: volumes[m["name"]]
                for m in c.get("volumeMounts", [])
                if not m.get("readOnly")
            }
            assert all("emptyDir" in v for v in mounts.values()), name
            read_only = [volumes[m["name"]] for m in c.get("volumeMounts", []) if m.get("readOnly")]
            assert all("secret" in v for v in read_only), name  # the review token, and nothing else
            env = env_of(c)
            writable = [
                env[k] for k in ("HOME", "TMPDIR", "KERAS_HOME", "MPLCONFIGDIR") if k in env
            ]
            if c["name"] == "train":
                writable.append("/scratch/cache")  # LEAF_TRAIN_CACHE_DIR
                assert len(writable) == 5, name
            for path in writable:
                assert any(path == m or path.startswith(m + "/") for m in mounts), (
                    f"{name}: {path} not writable"
                )


def test_s3_credentials_only_by_reference_and_each_component_its_own(renders):
    assert all(by_kind(objs, "Secret") == [] for objs in renders.values())
    objs = renders["existing-secret-values.yaml"]
    secret_of = {"CronJob": "leaf-s3-credentials", "Deployment": "leaf-s3-read-credentials"}
    for name, spec in pod_specs(objs):
        env = env_of(spec["containers"][0])
        if name.startswith("Pod/"):
            assert "AWS_ACCESS_KEY_ID" not in env  # the helm test pod only calls the Service
            continue
        secret = secret_of[name.split("/")[0]]
        assert env["AWS_ACCESS_KEY_ID"] == {
            "secretKeyRef": {"name": secret, "key": "access-key-id"}
        }, name
        assert env["AWS_SECRET_ACCESS_KEY"] == {
            "secretKeyRef": {"name": secret, "key": "secret-access-key"}
        }, name
        assert env["AWS_DEFAULT_REGION"] == "eu-west-1"
    default_env = env_of(
        one(renders["default-values.yaml"], "Deployment")["spec"]["template"]["spec"]["containers"][
            0
        ]
    )
    assert "AWS_ACCESS_KEY_ID" not in default_env


@pytest.mark.parametrize("values", VALUE_SETS)
def test_serving_runs_under_its_own_service_account_never_trainings(renders, values):
    objs = renders[values]
    accounts = {
        sa["metadata"]["labels"]["app.kubernetes.io/component"]: sa
        for sa in by_kind(objs, "ServiceAccount")
    }
    assert set(accounts) == {"training", "serving"}
    assert all(sa["automountServiceAccountToken"] is False for sa in accounts.values())
    dep = one(objs, "Deployment")["spec"]["template"]["spec"]
    assert (
        dep["serviceAccountName"]
        == accounts["serving"]["metadata"]["name"]
        == "leaf-leaf-train-serve"
    )
    for name, spec in pod_specs(objs):
        if name.startswith(("CronJob/", "Job/")):
            assert spec["serviceAccountName"] == accounts["training"]["metadata"]["name"], name
    subjects = [s["name"] for b in by_kind(objs, "RoleBinding") for s in b["subjects"]]
    assert subjects == [accounts["training"]["metadata"]["name"]]  # no Role reaches the server


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (
            ["--set", "s3.existingSecret=train-keys"],
            "serving.s3.existingSecret: expected the name of a Secret with read-only S3 keys for the server, "
            "because s3.existingSecret (train-keys) is set for training; received none",
        ),
        (
            ["--set", "s3.existingSecret=keys", "--set", "serving.s3.existingSecret=keys"],
            "serving.s3.existingSecret: expected a Secret other than training's s3.existingSecret; received the same",
        ),
        (
            [
                "--set",
                "serviceAccount.annotations.eks\\.amazonaws\\.com/role-arn=arn:aws:iam::1:role/train",
            ],
            "serving.serviceAccount.annotations: expected eks.amazonaws.com/role-arn naming the server's read-only "
            "role, because training's ServiceAccount has one; received none",
        ),
        (
            ["--set", "training.activeDeadlineSeconds=172800"],
            "training.config.incompleteGraceHours: expected at least training.activeDeadlineSeconds "
            "(172800 s = 48.0 h)",
        ),
    ],
)
def test_render_refuses_settings_that_would_weaken_isolation_or_retention(args, error):
    result = helm(
        "template", "leaf", str(CHART), *IMAGES, "--namespace", NAMESPACE, *args, check=False
    )
    assert result.returncode != 0
    assert error in result.stderr, result.stderr


def test_training_keys_alone_are_fine_without_a_server():
    objs = render("--set", "s3.existingSecret=train-keys", "--set", "serving.enabled=false")
    assert by_kind(objs, "Deployment") == [] and one(objs, "CronJob")


def test_minio_endpoint_network_policy_and_rollout(renders):
    objs = renders["minio-values.yaml"]
    for name, spec in pod_specs(objs):
        if not name.startswith("Pod/"):
            assert (
                env_of(spec["containers"][0])["AWS_ENDPOINT_URL"]
                == "http://minio.minio.svc.cluster.local:9000"
            )
    policies = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in by_kind(objs, "NetworkPolicy")
    }
    assert set(policies) == {"serving", "training"}
    assert "ingress" not in policies["training"]["spec"]  # nothing may call the training pod
    assert policies["serving"]["spec"]["ingress"][0]["ports"] == [
        {"port": "http", "protocol": "TCP"},
        {"port": "grpc", "protocol": "TCP"},
    ]
    egress_ports = {
        p["port"] for rule in policies["training"]["spec"]["egress"] for p in rule["ports"]
    }
    assert {53, 443, 9000} <= egress_ports
    dep_name = one(objs, "Deployment")["metadata"]["name"]
    assert one(objs, "ConfigMap", "training")["data"]["LEAF_TRAIN_ROLLOUT_DEPLOYMENT"] == dep_name
    role = one(objs, "Role")
    assert {
        "apiGroups": ["apps"],
        "resources": ["deployments"],
        "resourceNames": [dep_name],
        "verbs": ["patch"],
    } in role["rules"]


def test_rbac_grants_exactly_what_the_integration_uses(renders):
    objs = renders["default-values.yaml"]
    assert one(objs, "Role")["rules"] == [
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "patch"]},
    ]
    binding = one(objs, "RoleBinding")
    sa = one(objs, "ServiceAccount", "training")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": NAMESPACE}
    ]
    cron_pod = one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert cron_pod["serviceAccountName"] == sa["metadata"]["name"]
    assert cron_pod["automountServiceAccountToken"] is True


def test_irsa_annotations_pass_through_one_role_per_component(renders):
    objs = renders["irsa-values.yaml"]
    for component, role in (("training", "leaf-train"), ("serving", "leaf-serve")):
        sa = one(objs, "ServiceAccount", component)
        assert sa["metadata"]["annotations"] == {
            "eks.amazonaws.com/role-arn": f"arn:aws:iam::123456789012:role/{role}"
        }


def egress_ports(policy: dict[str, Any]) -> dict[int | str, list[dict[str, Any]]]:
    """Port -> the ``to`` peers of the rule that opens it (empty = anywhere)."""
    return {
        p["port"]: rule.get("to", []) for rule in policy["spec"]["egress"] for p in rule["ports"]
    }


def test_network_policies_are_on_by_default_and_least_privilege(renders):
    objs = renders["default-values.yaml"]
    serving, training = (
        one(objs, "NetworkPolicy", "serving"),
        one(objs, "NetworkPolicy", "training"),
    )
    assert serving["spec"]["podSelector"] == one(objs, "Deployment")["spec"]["selector"]
    # Only the server's ports: HTTP and gRPC from anywhere; /metrics and /review (the admin port) from the
    # release's own namespace only (issue 20: any pod could reach them).
    assert serving["spec"]["ingress"] == [
        {"ports": [{"port": "http", "protocol": "TCP"}, {"port": "grpc", "protocol": "TCP"}]},
        {"ports": [{"port": "admin", "protocol": "TCP"}], "from": [{"podSelector": {}}]},
    ]
    assert egress_ports(serving) == {53: [], 443: []}  # DNS and S3; no API server
    assert "ingress" not in training["spec"] and training["spec"]["policyTypes"] == [
        "Ingress",
        "Egress",
    ]
    assert egress_ports(training) == {53: [], 443: [], 6443: []}  # DNS, S3 and the API server
    quiet = render("--set", "training.kubeIntegration=off")
    assert egress_ports(one(quiet, "NetworkPolicy", "training")) == {53: [], 443: []}
    assert by_kind(render("--set", "networkPolicy.enabled=false"), "NetworkPolicy") == []


@pytest.mark.parametrize(
    ("args", "ports"),
    [
        (["--set", "s3.endpoint=http://minio.minio.svc:9000"], {9000}),
        (["--set", "s3.endpoint=https://s3.example.com"], {443}),
        (["--set", "s3.endpoint=http://minio.local"], {80}),
        (["--set", "s3.endpoint=http://[fd00::1]:9100"], {9100}),
        (["--set", "networkPolicy.storagePorts={9000,9443}"], {9000, 9443}),
    ],
)
def test_storage_egress_follows_the_endpoint(args, ports):
    serving = one(render(*args), "NetworkPolicy", "serving")
    assert set(egress_ports(serving)) - {53} == ports


def test_minio_narrows_storage_egress_and_lets_helm_test_in(renders):
    objs = renders["minio-values.yaml"]
    minio = [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "minio"}}}]
    for component in ("serving", "training"):
        assert egress_ports(one(objs, "NetworkPolicy", component))[9000] == minio
    peers = one(objs, "NetworkPolicy", "serving")["spec"]["ingress"][0]["from"]
    test_pod = one(objs, "Pod")["metadata"]["labels"]
    assert any(
        all(
            test_pod.get(k) == v
            for k, v in peer.get("podSelector", {}).get("matchLabels", {}).items()
        )
        and peer.get("podSelector")
        for peer in peers
    )


def test_rollout_permission_is_limited_to_the_restart_annotations(renders):
    objs = renders["minio-values.yaml"]  # rolloutServing on
    policy, binding = (
        one(objs, "ValidatingAdmissionPolicy"),
        one(objs, "ValidatingAdmissionPolicyBinding"),
    )
    dep_name = one(objs, "Deployment")["metadata"]["name"]
    sa = one(objs, "ServiceAccount", "training")["metadata"]["name"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert (rule["resources"], rule["resourceNames"], rule["operations"]) == (
        ["deployments"],
        [dep_name],
        ["UPDATE"],
    )
    (condition,) = policy["spec"]["matchConditions"]
    assert (
        condition["expression"]
        == f"request.userInfo.username == 'system:serviceaccount:{NAMESPACE}:{sa}'"
    )
    checked = " ".join(v["expression"] for v in policy["spec"]["validations"])
    assert "object.spec.template.spec == oldObject.spec.template.spec" in checked
    from leaf_train.kube import MODEL_VERSION_ANNOTATION, RESTARTED_AT_ANNOTATION

    allowed = {v["name"]: v["expression"] for v in policy["spec"]["variables"]}[
        "restartAnnotations"
    ]
    assert (
        allowed == f"['{RESTARTED_AT_ANNOTATION}', '{MODEL_VERSION_ANNOTATION}']"
    )  # what kube.rollout patches
    assert binding["spec"]["policyName"] == policy["metadata"]["name"]
    assert binding["spec"]["validationActions"] == ["Deny"]
    assert binding["spec"]["matchResources"]["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }
    # No rollout, no policy; and an operator without cluster-scope rights can switch it off.
    assert by_kind(renders["default-values.yaml"], "ValidatingAdmissionPolicy") == []
    unrestricted = render(
        "-f", str(CHART / "ci" / "minio-values.yaml"), "--set", "rbac.restrictRollout=false"
    )
    assert by_kind(unrestricted, "ValidatingAdmissionPolicy") == []


def test_no_cronjob_value_set_runs_once_at_install(renders):
    objs = renders["no-cronjob-values.yaml"]
    assert by_kind(objs, "CronJob") == []
    job = one(objs, "Job")
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})  # not a blocking hook
    # Not started by the schedule: the retrain policy's auto lets it train.
    assert "LEAF_TRAIN_RUN_TRIGGER" not in env_of(job["spec"]["template"]["spec"]["containers"][0])
    assert job["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    upgrade = render("-f", str(CHART / "ci" / "no-cronjob-values.yaml"), "--is-upgrade")
    assert by_kind(upgrade, "Job") == []


def test_kueue_queue_and_priority_label_every_training_job(renders):
    assert "kueue.x-k8s.io/queue-name" not in one(renders["default-values.yaml"], "CronJob")["spec"]["jobTemplate"][
        "metadata"]["labels"]  # fmt: skip
    args = [
        "--set",
        "training.kueue.queueName=gpu-training",
        "--set",
        "training.kueue.priorityClass=nightly",
    ]
    objs = render("--set", "training.runOnInstall=true", *args)
    templated = one(objs, "CronJob")["spec"]["jobTemplate"]["metadata"]["labels"]
    initial = one(objs, "Job")["metadata"]["labels"]
    for labels in (templated, initial):
        assert labels["kueue.x-k8s.io/queue-name"] == "gpu-training"
        assert labels["kueue.x-k8s.io/priority-class"] == "nightly"
    # The multi-worker Indexed Job is the same template: one workload, admitted as a whole.
    indexed = render("--set", "training.workers=2", *args)
    job_template = one(indexed, "CronJob")["spec"]["jobTemplate"]
    assert job_template["spec"]["completionMode"] == "Indexed"
    assert job_template["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-training"
    # `leaf-train submit` copies the template's labels, so a manual run waits in the same queue.
    from kubernetes import client
    from leaf_train.commands.kube import job_from_cronjob

    cronjob = client.ApiClient()._ApiClient__deserialize(one(objs, "CronJob"), "V1CronJob")
    cronjob.metadata.uid, cronjob.metadata.namespace = "uid-1", NAMESPACE
    assert (
        job_from_cronjob(cronjob, "manual-1")["metadata"]["labels"]["kueue.x-k8s.io/queue-name"]
        == "gpu-training"
    )
    bad = helm(
        "template",
        "leaf",
        str(CHART),
        *IMAGES,
        "--set",
        "training.kueue.queueName=Not_A_Name",
        check=False,
    )
    assert bad.returncode != 0 and "queueName" in bad.stderr


def test_config_change_rolls_pods_via_checksum(renders):
    def checksums(objs):
        dep = one(objs, "Deployment")["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        cron = one(objs, "CronJob")["spec"]["jobTemplate"]["spec"]["template"]["metadata"][
            "annotations"
        ]
        return dep, cron["checksum/config"]

    base = checksums(renders["default-values.yaml"])
    serving_changed = checksums(render("--set", "serving.config.topK=3"))
    training_changed = checksums(render("--set", "training.config.batchSize=32"))
    assert serving_changed[0] != base[0] and serving_changed[1] == base[1]
    assert training_changed[1] != base[1] and training_changed[0] == base[0]


def test_helm_test_hook_checks_readiness_and_infers(renders):
    pod = one(renders["default-values.yaml"], "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    script = pod["spec"]["containers"][0]["args"][0]
    assert "/v2/health/ready" in script and "/classify" in script
    env = env_of(pod["spec"]["containers"][0])
    svc = one(renders["default-values.yaml"], "Service")
    assert env["BASE_URL"] == f"http://{svc['metadata']['name']}:80"
    compile(script, "helm-test", "exec")  # the inline Python at least parses


def test_labels_follow_the_recommended_set(renders):
    for obj in renders["default-values.yaml"]:
        labels = obj["metadata"]["labels"]
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{obj['kind']}: {key}"


def test_notes_say_how_to_start_follow_and_call():
    out = helm(
        "install", "leaf", str(CHART), "--dry-run=client", "--namespace", NAMESPACE, *IMAGES
    ).stdout
    notes = out[out.index("NOTES:") :]
    assert "kubectl create job --namespace leaf-train --from=cronjob/leaf-leaf-train-train" in notes
    assert "leaf-train status --namespace leaf-train --job" in notes
    assert "leaf-train submit --namespace leaf-train --cronjob leaf-leaf-train-train" in notes
    assert (
        "it skips like a scheduled run when nothing changed" in notes
    )  # kubectl --from copies the marking
    assert (
        "kubectl logs" in notes
        and "/classify" in notes
        and "/v2/models/leaf-classifier/infer" in notes
    )


@pytest.fixture(scope="session")
def checkov_report(tmp_path_factory) -> dict[str, Any]:
    """One checkov run over every render. Its scan takes about a second; printing the full JSON
    report (every passed check with its code) to a terminal took 6 more, hence ``--compact`` and a
    report file."""
    if not CHECKOV.exists():
        pytest.fail(
            f"expected checkov at {CHECKOV.relative_to(ROOT)} (make test installs it); found none"
        )
    folder, report = tmp_path_factory.mktemp("renders"), tmp_path_factory.mktemp("checkov")
    for name in VALUE_SETS:
        out = helm(
            "template", "leaf", str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.31.0",
            "-f", str(CHART / "ci" / name), *IMAGES,
        ).stdout  # fmt: skip
        (folder / name).write_text(out)
    result = subprocess.run(
        [
            str(CHECKOV), "-d", str(folder), "--framework", "kubernetes", "--skip-download",
            "--output", "json", "--compact", "--output-file-path", str(report),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    written = list(report.glob("*.json"))
    assert len(written) == 1, (
        f"expected one checkov report, found {written}: {result.stderr[-2000:]}"
    )
    parsed = json.loads(written[0].read_text())
    return parsed[0] if isinstance(parsed, list) else parsed


def test_checkov_policy_scan_passes(checkov_report):
    failed = [
        f"{c['check_id']} {c['check_name']} ({c['resource']} in {Path(c['file_path']).name})"
        for c in checkov_report["results"]["failed_checks"]
    ]
    assert failed == []
    assert checkov_report["summary"]["passed"] > 100  # it really scanned the workloads


def test_every_checkov_skip_carries_a_written_reason(checkov_report):
    skipped = checkov_report["results"]["skipped_checks"]
    assert skipped, "expected the documented skips to show up"
    for check in skipped:
        reason = (check.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason.split()) >= 5, (
            f"{check['check_id']} on {check['resource']}: reason {reason!r}"
        )


def test_documented_iam_policies_parse_and_the_kind_workflow_uses_the_servers():
    """The policies people will copy are valid JSON, and CI's MinIO user for the server has exactly them."""
    doc = (ROOT / "docs" / "kubernetes.md").read_text()
    section = doc[doc.index("### Credentials and IAM policies") : doc.index("**Network policies**")]
    blocks = re.findall(r"```json\n(.*?)```", section, re.S)
    training, serving, capture = (
        json.loads(b) for b in blocks
    )  # capture: the one optional statement
    assert {s["Sid"] for s in training["Statement"]} == {
        "ListPhotos",
        "ReadPhotos",
        "ListModel",
        "WriteModel",
    }
    actions = {s["Action"] for s in serving["Statement"]}
    assert actions == {"s3:ListBucket", "s3:GetObject"}  # read-only
    assert capture["Action"] == "s3:PutObject" and capture["Resource"].endswith("/inbox/*")

    workflow = (ROOT / ".github" / "workflows" / "kind.yaml").read_text()
    minio = json.loads(
        re.search(r"cat > /tmp/leaf-serve-policy.json <<'JSON'\n(.*?)\n\s*JSON", workflow, re.S)[1]
    )

    def grants(policy: dict) -> list[tuple]:
        def as_list(v):
            return sorted([v] if isinstance(v, str) else v)

        return sorted(
            (
                tuple(as_list(s["Action"])),
                tuple(as_list(s["Resource"])),
                json.dumps(s.get("Condition"), sort_keys=True),
            )
            for s in policy["Statement"]
        )

    assert grants(minio) == grants(serving)
