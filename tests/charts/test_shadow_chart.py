"""The chart's shadow rollout: rollout and mirroring values reach the pods, the verdict is scheduled only with it."""

from __future__ import annotations

from test_chart import one, render

SHADOW = ("--set", "training.config.rollout=shadow", "--set", "serving.config.shadowFraction=0.25")


def env_of(configmap: dict, key: str) -> str | None:
    return configmap["data"].get(key)


def test_direct_rollout_renders_no_verdict_schedule() -> None:
    objs = render()
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "CronJob"] == [
        "leaf-leaf-train-train"
    ]
    assert (
        env_of(one(objs, "ConfigMap", "training"), "LEAF_TRAIN_ROLLOUT") is None
    )  # the job's default: direct


def test_shadow_rollout_schedules_the_verdict_and_mirrors() -> None:
    objs = render(*SHADOW, "--set", "training.shadowVerdict.schedule=*/20 * * * *")
    assert env_of(one(objs, "ConfigMap", "training"), "LEAF_TRAIN_ROLLOUT") == "shadow"
    assert env_of(one(objs, "ConfigMap", "serving"), "LEAF_SERVE_SHADOW_FRACTION") == "0.25"
    verdict = one(objs, "CronJob", "shadow-verdict")
    assert verdict["spec"]["schedule"] == "*/20 * * * *"
    pod = verdict["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"] == ["train", "--verdict-only"]
    assert container["envFrom"][0]["configMapRef"]["name"] == "leaf-leaf-train-train"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert {v["name"] for v in container["env"]} >= {"LEAF_TRAIN_JOB_NAME", "LEAF_TRAIN_NAMESPACE"}


def test_verdict_schedule_can_be_turned_off() -> None:
    objs = render(*SHADOW, "--set", "training.shadowVerdict.enabled=false")
    assert [o for o in objs if o["kind"] == "CronJob" and "verdict" in o["metadata"]["name"]] == []
