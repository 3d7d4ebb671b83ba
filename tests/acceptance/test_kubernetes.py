"""deploy/kubernetes/ says what forge-node really does: every manifest is valid for the
Kubernetes versions we support, its numbers agree with the repository's forge.toml (read with
each pod's own environment), and each Deployment's pod, started as the manifest says on a
read-only root, runs its roles and passes its probes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from forge_node import config as config_module
from tests.plugins.apps import AppDir, copy_demo_app, free_port
from tests.plugins.nodes import FORGE_NODE, NodeProcess, forge_cli, node_env

REPO = Path(__file__).resolve().parents[2]
KUBERNETES = REPO / "deploy" / "kubernetes"
SECRET_EXAMPLE = KUBERNETES / "secret.example.yaml"
# The oldest version the manifests need (the preStop `sleep` action is on by default from
# 1.30) and the newest kubernetes-validate knows.
VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
# What each role group runs: functions need the gateway; crons become jobs for the workers.
ROLES = {"gateway": ("gateway", "function"), "worker": ("worker",),
         "scheduler": ("scheduler",)}
SECRET_VARIABLES = ("DATABASE_URL", "JWT_SECRET")
MIN_PRE_STOP_SECS = 5  # endpoint removal reaches kube-proxy and load balancers in seconds


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")


def resources() -> list[dict]:
    found = []
    for path in manifest_files():
        found.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return found


def of_kind(kind: str) -> dict[str, dict]:
    return {r["metadata"]["name"]: r for r in resources() if r["kind"] == kind}


def deployments() -> dict[str, dict]:
    """{component: Deployment}: gateway, worker, scheduler."""
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d
            for d in of_kind("Deployment").values()}


def pod_specs() -> dict[str, dict]:
    """Every pod template, the Deployments' and the migration Job's."""
    specs = {c: d["spec"]["template"]["spec"] for c, d in deployments().items()}
    specs.update({name: job["spec"]["template"]["spec"] for name, job in of_kind("Job").items()})
    return specs


def node_container(deployment: dict) -> dict:
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    return container


def example_secret() -> dict:
    return yaml.safe_load(SECRET_EXAMPLE.read_text())


def container_env(container: dict) -> dict[str, str]:
    """The container's environment as the kubelet sets it, with secrets from the example."""
    secret = example_secret()
    env = {}
    for variable in container.get("env", []):
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            ref = variable["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], variable
            env[variable["name"]] = secret["stringData"][ref["key"]]
    return env


def node_config(deployment: dict) -> config_module.Config:
    """forge.toml as the pod's node reads it."""
    return config_module.load(REPO / "forge.toml", container_env(node_container(deployment)))


def container_port(container: dict, port: int | str) -> int:
    """A probe's or Service's port: a number, or the name of one of the container's ports."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version):
    validated = []
    for resource in resources():
        # strict: an unknown or misspelt field is an error, not silently dropped by the server
        kubernetes_validate.validate(resource, version, strict=True)
        validated.append(resource["kind"])
    assert sorted(set(validated)) == ["Deployment", "HorizontalPodAutoscaler", "Job",
                                      "PodDisruptionBudget", "Secret", "Service"]


def test_the_kustomization_applies_every_manifest_but_the_secret_example():
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    listed = {KUBERNETES / name for name in kustomization["resources"]}
    # An apply must never overwrite the real Secret with the example's placeholders.
    assert listed == set(manifest_files()) - {SECRET_EXAMPLE}
    images = {c["image"] for spec in pod_specs().values() for c in spec["containers"]}
    assert images == {image["name"] for image in kustomization["images"]}


@pytest.mark.parametrize("component", ROLES)
def test_the_grace_period_outlasts_the_pre_stop_pause_and_the_drain(component):
    deployment = deployments()[component]
    spec = deployment["spec"]["template"]["spec"]
    pre_stop = node_container(deployment).get("lifecycle", {}).get("preStop", {})
    pause = pre_stop.get("sleep", {}).get("seconds", 0)
    if component == "gateway":  # the only group behind a Service
        assert pause >= MIN_PRE_STOP_SECS, "the drain would start while traffic still arrives"
    drain = node_config(deployment).node.drain_timeout_secs
    # the margin lets the supervisor kill what is left and leave the registry (a 5 s connect
    # timeout and a 5 s statement timeout at worst)
    assert spec["terminationGracePeriodSeconds"] >= pause + drain + 10


@pytest.mark.parametrize("component", ROLES)
def test_probes_ask_the_node_on_its_gateway_port(component):
    deployment = deployments()[component]
    container = node_container(deployment)
    port = node_config(deployment).gateway.port
    expected = {"startupProbe": "/_api/health", "readinessProbe": "/_api/ready",
                "livenessProbe": "/_api/health"}
    for probe, path in expected.items():
        check = container[probe]["httpGet"]
        assert check["path"] == path, probe
        assert container_port(container, check["port"]) == port, probe
    # the readiness check waits 2 s for the database; the probe must wait longer
    assert container["readinessProbe"]["timeoutSeconds"] > 2


@pytest.mark.parametrize("component", ROLES)
def test_each_deployment_runs_its_role_group(component):
    assert node_config(deployments()[component]).node.roles == ROLES[component]


def test_each_disruption_budget_covers_exactly_its_deployment():
    budgets = of_kind("PodDisruptionBudget")
    assert len(budgets) == len(ROLES)
    for budget in budgets.values():
        selector = budget["spec"]["selector"]["matchLabels"]
        covered = [c for c, d in deployments().items()
                   if selects(selector, d["spec"]["template"]["metadata"]["labels"])]
        assert covered == [budget["metadata"]["labels"]["app.kubernetes.io/component"]]
        replicas = deployments()[covered[0]]["spec"].get("replicas") or min(
            a["spec"]["minReplicas"] for a in of_kind("HorizontalPodAutoscaler").values())
        disruptable = budget["spec"].get("maxUnavailable",
                                          replicas - budget["spec"].get("minAvailable", 0))
        assert 0 < disruptable < replicas, "a node drain must be possible and leave one pod"


def test_the_service_sends_traffic_to_the_gateway_port_of_gateway_pods_only():
    [service] = of_kind("Service").values()
    selected = [c for c, d in deployments().items()
                if selects(service["spec"]["selector"],
                           d["spec"]["template"]["metadata"]["labels"])]
    assert selected == ["gateway"]
    gateway = deployments()["gateway"]
    [port] = service["spec"]["ports"]
    assert container_port(node_container(gateway), port["targetPort"]) == \
        node_config(gateway).gateway.port


def test_the_autoscaler_scales_the_gateway_deployment():
    [autoscaler] = of_kind("HorizontalPodAutoscaler").values()
    gateway = deployments()["gateway"]
    target = autoscaler["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == \
        (gateway["apiVersion"], gateway["kind"], gateway["metadata"]["name"])
    assert "replicas" not in gateway["spec"], "each apply would reset the autoscaler's count"
    assert autoscaler["spec"]["minReplicas"] >= 2
    [metric] = autoscaler["spec"]["metrics"]
    # utilisation is a share of the request, so the gateway must request CPU
    assert metric["resource"]["name"] == "cpu"
    assert node_container(gateway)["resources"]["requests"]["cpu"]


def image_uid() -> int:
    return int(re.search(r"useradd[^\n]*--uid (\d+)", (REPO / "Containerfile").read_text())[1])


@pytest.mark.parametrize("name", sorted(pod_specs()))
def test_every_pod_runs_as_the_image_user_on_a_read_only_root(name):
    spec = pod_specs()[name]
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == pod["runAsGroup"] == image_uid()
    assert spec["automountServiceAccountToken"] is False
    tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"]:
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"]["drop"] == ["ALL"]
        # gunicorn's worker heartbeat files need a writable temporary directory
        assert {(m["name"], m["mountPath"]) for m in container["volumeMounts"]} == \
            {(v, "/tmp") for v in tmp_volumes}


QUANTITY = re.compile(r"^(\d+(?:\.\d+)?)(m|Ki|Mi|Gi)?$")
SCALE = {None: 1, "m": 0.001, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity(text: str) -> float:
    number, unit = QUANTITY.fullmatch(str(text)).groups()
    return float(number) * SCALE[unit]


@pytest.mark.parametrize("name", sorted(pod_specs()))
def test_every_container_requests_what_it_needs_and_has_limits(name):
    for container in pod_specs()[name]["containers"]:
        resources = container["resources"]
        for kind in ("cpu", "memory"):
            assert 0 < quantity(resources["requests"][kind]) \
                <= quantity(resources["limits"][kind]), kind


@pytest.mark.parametrize("name", sorted(pod_specs()))
def test_secrets_come_from_the_secret_and_nowhere_else(name):
    secret = example_secret()
    for container in pod_specs()[name]["containers"]:
        env = {variable["name"]: variable for variable in container["env"]}
        assert "DATABASE_URL" in env
        for variable in SECRET_VARIABLES:
            if variable in env:
                ref = env[variable]["valueFrom"]["secretKeyRef"]
                assert ref["name"] == secret["metadata"]["name"]
                assert ref["key"] in secret["stringData"]
        assert "envFrom" not in container
    gateway_env = {v["name"] for v in node_container(deployments()["gateway"])["env"]}
    assert "JWT_SECRET" in gateway_env, "the gateway verifies tokens"
    for value in secret["stringData"].values():
        assert "CHANGE-ME" in value, "the example holds placeholders, never real values"


def test_the_migration_job_migrates_the_database(tmp_path, database_url):
    [job] = of_kind("Job").values()
    [container] = job["spec"]["template"]["spec"]["containers"]
    root = demo_app(tmp_path)
    command = [word.replace("/app/", f"{root}/") for word in container["command"]]
    assert command[:3] == ["forge-node", "migrate", "up"]
    env = node_env(database_url)
    assert forge_cli(*command[1:], env=env).returncode == 0
    status = forge_cli("migrate", "status", "--config", str(root / "forge.toml"), env=env)
    rows = [line.split() for line in status.stdout.splitlines()[1:]]
    assert "app" in {row[0] for row in rows}, status.stdout
    assert {row[3] for row in rows} == {"applied"}, status.stdout


def demo_app(tmp_path: Path) -> Path:
    return copy_demo_app(tmp_path / "app")


def read_only_root_available() -> bool:
    return os.geteuid() == 0 and shutil.which("unshare") is not None


@pytest.mark.skipif(not read_only_root_available(),
                    reason="a read-only root needs root and unshare (CI has both)")
@pytest.mark.parametrize("component", ROLES)
def test_each_deployment_pod_runs_its_roles_on_a_read_only_root_and_passes_its_probes(
        component, tmp_path, database_url):
    """The pod's node, in a mount namespace whose root is read-only: only the temporary
    directory (a tmpfs, the pod's /tmp emptyDir) can be written."""
    deployment = deployments()[component]
    container = node_container(deployment)
    root = demo_app(tmp_path)
    writable = tmp_path / "tmp"
    writable.mkdir()
    port = free_port()
    env = node_env(database_url, **container_env(container))
    env.update(DATABASE_URL=database_url, PORT=str(port), TMPDIR=str(writable),
               PYTHONDONTWRITEBYTECODE="1")
    assert forge_cli("migrate", "up", "--config", str(root / "forge.toml"), env=env).returncode == 0
    read_only = 'mount -o remount,bind,ro / && mount -t tmpfs -o size=64m tmpfs "$TMPDIR" ' \
                '&& exec "$@"'
    command = ["unshare", "--mount", "--propagation", "private", "sh", "-c", read_only, "sh",
               *FORGE_NODE, "run", "--config", str(root / "forge.toml")]
    node = NodeProcess(AppDir(root, port), env, tmp_path / "node.log")
    node.proc = subprocess.Popen(command, env=env, cwd=root,
                                 stdout=(tmp_path / "node.log").open("wb"),
                                 stderr=subprocess.STDOUT)
    try:
        node.wait_ready()
        mounts = Path(f"/proc/{node.pid}/mountinfo").read_text().splitlines()
        [root_mount] = [m.split() for m in mounts if m.split()[4] == "/"]
        assert "ro" in root_mount[5].split(","), "the node's root is not read-only"
        expected = {r for r in ROLES[component] if r != "function"}
        assert set(node.children()) - {"monitor"} == expected
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            path = container[probe]["httpGet"]["path"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
                assert answer.status == 200, probe
    finally:
        node.kill_tree()
