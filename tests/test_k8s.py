"""deploy/k8s/ offline: the core resources and every pod template against the Kubernetes
schemas, the custom resources' fields against the KubeRay and Prometheus Operator APIs, and
the manifests in agreement with docker-compose.yml (no Kubernetes cluster runs here)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_operations_config import COMPOSE_FILE

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.37.0"
# The fields of the API objects the custom resources use (KubeRay ray.io/v1, Prometheus
# Operator monitoring.coreos.com/v1), by object; a field not listed is a typo or a field of
# another API version.
FIELDS = {
    "RayCluster.spec": {"rayVersion", "headGroupSpec", "workerGroupSpecs",
                        "enableInTreeAutoscaling", "autoscalerOptions", "suspend",
                        "headServiceAnnotations", "managedBy", "gcsFaultToleranceOptions"},
    "HeadGroupSpec": {"rayStartParams", "template", "serviceType", "headService",
                      "enableIngress"},
    "WorkerGroupSpec": {"groupName", "replicas", "minReplicas", "maxReplicas",
                        "rayStartParams", "template", "idleTimeoutSeconds", "scaleStrategy",
                        "suspend", "numOfHosts"},
    "RayJob.spec": {"entrypoint", "clusterSelector", "rayClusterSpec", "submissionMode",
                    "submitterPodTemplate", "submitterConfig", "runtimeEnvYAML", "jobId",
                    "metadata", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
                    "activeDeadlineSeconds", "entrypointNumCpus", "entrypointNumGpus",
                    "entrypointResources", "backoffLimit", "suspend", "managedBy",
                    "deletionStrategy"},
    "PodMonitor.spec": {"selector", "podMetricsEndpoints", "namespaceSelector", "jobLabel",
                        "podTargetLabels", "sampleLimit"},
    "PodMetricsEndpoint": {"port", "path", "interval", "scrapeTimeout", "scheme",
                           "metricRelabelings", "relabelings", "honorLabels"},
    "ServiceMonitor.spec": {"selector", "endpoints", "namespaceSelector", "jobLabel",
                            "targetLabels", "sampleLimit"},
    "Endpoint": {"port", "path", "interval", "scrapeTimeout", "scheme", "metricRelabelings",
                 "relabelings", "honorLabels"},
    "RelabelConfig": {"sourceLabels", "separator", "targetLabel", "regex", "modulus",
                      "replacement", "action"},
}
SUBMISSION_MODES = {"K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"}


def documents() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in documents() if d["kind"] == kind]


def pod_templates() -> list[tuple[str, dict[str, Any]]]:
    (cluster,) = by_kind("RayCluster")
    (job,) = by_kind("RayJob")
    spec = cluster["spec"]
    return [("head", spec["headGroupSpec"]["template"]),
            *((group["groupName"], group["template"]) for group in spec["workerGroupSpecs"]),
            ("submitter", job["spec"]["submitterPodTemplate"]),
            *(("sampler", d["spec"]["template"]) for d in by_kind("Deployment"))]


def unknown_fields(kind: str, value: dict[str, Any]) -> set[str]:
    return set(value) - FIELDS[kind]


def test_the_core_resources_and_every_pod_template_fit_the_kubernetes_schemas():
    core = [d for d in documents() if d["apiVersion"] in ("v1", "apps/v1")]
    assert {d["kind"] for d in core} == {"Deployment", "Service"}
    for resource in core:
        kubernetes_validate.validate(resource, KUBERNETES, strict=True)
    for name, template in pod_templates():
        kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate",
                                      "metadata": {"name": name}, "template": template},
                                     KUBERNETES, strict=True)


def test_the_schema_check_can_fail():
    deployment = by_kind("Deployment")[0]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}   # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    assert unknown_fields("WorkerGroupSpec", {"groupName": "x", "replica": 2}) == {"replica"}


def test_the_custom_resources_use_only_fields_of_their_apis():
    (cluster,) = by_kind("RayCluster")
    assert cluster["apiVersion"] == "ray.io/v1"
    assert not unknown_fields("RayCluster.spec", cluster["spec"])
    assert not unknown_fields("HeadGroupSpec", cluster["spec"]["headGroupSpec"])
    for group in cluster["spec"]["workerGroupSpecs"]:
        assert not unknown_fields("WorkerGroupSpec", group)
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    (job,) = by_kind("RayJob")
    assert job["apiVersion"] == "ray.io/v1"
    assert not unknown_fields("RayJob.spec", job["spec"])
    assert job["spec"]["submissionMode"] in SUBMISSION_MODES
    for monitor in by_kind("PodMonitor"):
        assert not unknown_fields("PodMonitor.spec", monitor["spec"])
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert not unknown_fields("PodMetricsEndpoint", endpoint)
            for relabel in endpoint.get("metricRelabelings", []):
                assert not unknown_fields("RelabelConfig", relabel)
    for monitor in by_kind("ServiceMonitor"):
        assert not unknown_fields("ServiceMonitor.spec", monitor["spec"])
        for endpoint in monitor["spec"]["endpoints"]:
            assert not unknown_fields("Endpoint", endpoint)


def containers() -> list[dict[str, Any]]:
    return [c for _, template in pod_templates() for c in template["spec"]["containers"]]


def test_the_manifests_agree_with_compose_and_the_lock():
    compose = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    image = compose["ray-head"]["image"]
    assert {c["image"] for c in containers()} == {image}     # one Ray version everywhere
    (cluster,) = by_kind("RayCluster")
    ray_pin = re.search(r"^ray==(\S+) ", (ROOT / "requirements.lock").read_text(), re.M)
    assert cluster["spec"]["rayVersion"] == ray_pin.group(1)
    head = cluster["spec"]["headGroupSpec"]["rayStartParams"]
    assert head["num-cpus"] == "0" and head["metrics-export-port"] == "8080"
    # The same learner entry point and flags as compose's, but on the head: no --ray-node.
    (job,) = by_kind("RayJob")
    entrypoint = shlex.split(job["spec"]["entrypoint"])
    theirs = [a for a in compose["learner"]["command"] if not a.startswith("${")]
    assert entrypoint[:2] == theirs[:2] == ["edis", "demo"]
    for flag in ("--run-dir", "--metrics-port", "--actors", "--sampler-token-file"):
        assert flag in entrypoint, flag
    assert "--ray-node" in theirs and "--ray-node" not in entrypoint
    assert job["spec"]["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    # the sampler: compose's command, the token from a Secret, the ports the monitors scrape
    (deployment,) = by_kind("Deployment")
    (sampler,) = deployment["spec"]["template"]["spec"]["containers"]
    assert sampler["command"][:3] == compose["sampler"]["command"][:3]
    ports = {p["name"]: p["containerPort"] for p in sampler["ports"]}
    assert ports == {"grpc": 50051, "metrics": 9101}
    assert "services.sampler.probe" in sampler["readinessProbe"]["exec"]["command"]


def test_every_secret_and_port_a_pod_names_is_defined():
    for name, template in pod_templates():
        volumes = {v["name"]: v for v in template["spec"].get("volumes", [])}
        for container in template["spec"]["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes, (name, mount)
            for variable in container.get("env", []):
                if variable["name"].endswith("_PATH") and variable["value"].startswith(
                        "/run/secrets/"):
                    assert any(variable["value"].startswith(m["mountPath"])
                               for m in container["volumeMounts"]), (name, variable)
    secrets = {v["secret"]["secretName"] for _, t in pod_templates()
               for v in t["spec"].get("volumes", []) if "secret" in v}
    readme = (K8S / "README.md").read_text()
    for secret in secrets:
        assert f"kubectl create secret generic {secret}" in readme, secret
    named = {p["name"] for c in containers() for p in c.get("ports", [])}
    for monitor in by_kind("PodMonitor"):
        assert {e["port"] for e in monitor["spec"]["podMetricsEndpoints"]} <= named
    (service,) = by_kind("Service")
    assert {p["name"] for p in service["spec"]["ports"]} >= {
        e["port"] for m in by_kind("ServiceMonitor") for e in m["spec"]["endpoints"]}
