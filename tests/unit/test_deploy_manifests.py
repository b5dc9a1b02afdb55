"""The deployment files under ``deploy/`` keep their promises, checked offline.

Kubernetes: ``kubectl kustomize`` renders the base and every overlay, exactly
as ``kubectl apply -k`` would send them. Every rendered object is validated,
strictly (unknown fields are errors), against the API schemas that
``kubernetes-validate`` bundles, for the oldest Kubernetes these manifests
support (1.30: the preStop ``sleep`` action is on by default from there) and
the newest it ships. The ServiceMonitor is a CRD the package cannot know, so
it is checked against a schema of the fields it uses, written here. Then the
properties the operations guide promises are asserted on the rendered
objects: hardened pods with resources, secrets only referenced (and every key
named in the documented ``kubectl create secret``), network policies that let
only the control plane reach Postgres, Redis and the runners (evaluated as
selectors over the real pod labels), the migration Job, the probes and the
shutdown budget, and GPU requests. The config in the ConfigMap is loaded with
Enclave's own ``load_settings`` under the environment the pods get, so an
``ENCLAVE_*`` variable that is not a setting, or a reference that resolves to
nothing, fails here rather than in a crash-looping pod.

Compose: ``compose.yaml`` is parsed and its structure checked (two replicas
behind haproxy, health-gated start order, shutdown budget), and haproxy checks
its own config when it is installed. Nothing here starts a container: the
image is not built in this repository, and neither Docker nor a cluster is
available to the tests.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclave.cli.main import app as cli_app
from enclave.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
OPERATIONS_DOC = ROOT / "docs" / "operations.md"

KUBECTL = next(
    (
        path
        for path in ("/usr/bin/kubectl", shutil.which("kubectl"))
        if path and Path(path).exists()
    ),
    None,
)
HAPROXY = next(
    (
        path
        for path in ("/usr/sbin/haproxy", shutil.which("haproxy"))
        if path and Path(path).exists()
    ),
    None,
)
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: cannot render the Kustomize overlays"
)

# The oldest Kubernetes the manifests support, and the newest schemas the package ships.
KUBERNETES_VERSIONS = ("1.30", kubernetes_validate.latest_version())
REQUIRED_OVERLAYS = {"external-postgres", "bundled-postgres", "gpu-runners", "monitoring"}
TARGETS = ["base", *sorted(f"overlays/{d.name}" for d in (KUBERNETES / "overlays").iterdir())]
# Overlays that add a database, i.e. the ones that can actually run.
DATABASE_TARGETS = [t for t in TARGETS if t != "base"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
SECRET_NAME = "enclave-secrets"
CONTROL_PLANE = "enclave"


@functools.cache
def render(target: str) -> tuple[dict[str, Any], ...]:
    assert KUBECTL is not None
    result = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES / target)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(target: str, kind: str) -> list[dict[str, Any]]:
    return [obj for obj in render(target) if obj["kind"] == kind]


def one(target: str, kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in objects(target, kind) if obj["metadata"]["name"] == name]
    assert len(found) == 1, f"{target}: expected one {kind} {name}, found {len(found)}"
    return found[0]


def workloads(target: str) -> list[dict[str, Any]]:
    return [obj for obj in render(target) if obj["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    return workload["spec"]["template"]["spec"]


def pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    return workload["spec"]["template"]["metadata"]["labels"]


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return spec.get("initContainers", []) + spec["containers"]


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels and matchExpressions)."""
    for key, value in selector.get("matchLabels", {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions", []):
        key, operator = expression["key"], expression["operator"]
        values = expression.get("values", [])
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def control_plane(target: str) -> dict[str, Any]:
    return one(target, "Deployment", CONTROL_PLANE)


def container_env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["name"]: entry for entry in container.get("env", [])}


def enclave_config(target: str) -> dict[str, Any]:
    configmaps = [
        obj
        for obj in objects(target, "ConfigMap")
        if obj["metadata"]["name"].startswith("enclave-config")
    ]
    assert len(configmaps) == 1
    return yaml.safe_load(configmaps[0]["data"]["enclave.yaml"])


def walk_secret_refs(node: Any) -> Iterator[tuple[str, str | None]]:
    """Every (Secret name, key) an object refers to; key None for a whole Secret."""
    if isinstance(node, dict):
        if "secretKeyRef" in node:
            yield node["secretKeyRef"]["name"], node["secretKeyRef"]["key"]
        if "secret" in node and isinstance(node["secret"], dict) and "secretName" in node["secret"]:
            items = node["secret"].get("items")
            if items:
                for item in items:
                    yield node["secret"]["secretName"], item["key"]
            else:
                yield node["secret"]["secretName"], None
        if "secretRef" in node:
            yield node["secretRef"]["name"], None
        for value in node.values():
            yield from walk_secret_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk_secret_refs(value)


def documented_secret_keys() -> set[str]:
    """Keys the operations guide tells the user to put into enclave-secrets."""
    text = OPERATIONS_DOC.read_text()
    section = text[text.index("\n## Kubernetes") :]
    keys = set(re.findall(r"--from-(?:literal|file)=([A-Za-z0-9._-]+)=", section))
    # kubectl patch ... -p "{\"stringData\":{\"KEY\":...}}" (quotes escaped for the shell)
    keys |= set(re.findall(r'\\?"stringData\\?":\s*\{\s*\\?"([A-Za-z0-9._-]+)', section))
    return keys


def cli_params(*path: str) -> set[str]:
    """The option names of an ``enclave`` subcommand, from the real CLI."""
    command: Any = typer.main.get_command(cli_app)
    for name in path:
        command = command.commands[name]  # a group: typer's own (vendored) click
    return {opt for param in command.params for opt in param.opts}


def assert_cli_args_exist(args: list[str], *path: str) -> None:
    known = cli_params(*path)
    flags = [arg.split("=", 1)[0] for arg in args if arg.startswith("--")]
    unknown = sorted(set(flags) - known)
    assert not unknown, f"enclave {' '.join(path)} has no option {unknown}"


# --- Kubernetes: the layout and the schemas ---------------------------------------------


def test_the_documented_overlays_exist() -> None:
    present = {d.name for d in (KUBERNETES / "overlays").iterdir() if d.is_dir()}
    assert present >= REQUIRED_OVERLAYS


@needs_kubectl
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_matches_the_kubernetes_schema(target: str, version: str) -> None:
    problems = []
    for obj in render(target):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: test_service_monitor_is_well_formed
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{name}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            problems.append(f"{name}: {exc.message}")
    assert not problems, "\n".join(problems)


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_in_the_enclave_namespace(target: str) -> None:
    for obj in render(target):
        if obj["kind"] == "Namespace":
            labels = obj["metadata"]["labels"]
            assert obj["metadata"]["name"] == "enclave"
            assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
            continue
        assert obj["metadata"].get("namespace") == "enclave", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "enclave"


# Just the fields the component uses, as the Prometheus Operator's CRD defines them.
SERVICE_MONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name", "namespace"],
            "properties": {
                "labels": {"type": "object", "additionalProperties": {"type": "string"}}
            },
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["port", "path"],
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "authorization": {
                                "type": "object",
                                "required": ["type", "credentials"],
                                "additionalProperties": False,
                                "properties": {
                                    "type": {"const": "Bearer"},
                                    "credentials": {
                                        "type": "object",
                                        "required": ["name", "key"],
                                        "additionalProperties": False,
                                        "properties": {
                                            "name": {"type": "string"},
                                            "key": {"type": "string"},
                                        },
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}


@needs_kubectl
def test_service_monitor_is_well_formed() -> None:
    (monitor,) = objects("overlays/monitoring", "ServiceMonitor")
    jsonschema.validate(monitor, SERVICE_MONITOR_SCHEMA)
    service = one("overlays/monitoring", "Service", CONTROL_PLANE)
    # It finds the control plane's Service, on a port that Service has.
    assert matches(monitor["spec"]["selector"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    # It sends the very token the server accepts for /metrics.
    credentials = endpoint["authorization"]["credentials"]
    container = control_plane("overlays/monitoring")["spec"]["template"]["spec"]["containers"][0]
    token_variable = enclave_config("overlays/monitoring")["metrics_token"].removeprefix("env:")
    token_ref = container_env(container)[token_variable]["valueFrom"]["secretKeyRef"]
    assert (credentials["name"], credentials["key"]) == (token_ref["name"], token_ref["key"])


# --- Kubernetes: properties -------------------------------------------------------------


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_pod_is_hardened_and_bounded(target: str) -> None:
    assert workloads(target), target
    for workload in workloads(target):
        spec = pod_spec(workload)
        pod = spec.get("securityContext", {})
        assert spec.get("automountServiceAccountToken") is False, workload["metadata"]["name"]
        for container in containers(workload):
            where = f"{target}: {workload['metadata']['name']}/{container['name']}"
            own = container.get("securityContext", {})
            assert own.get("runAsNonRoot", pod.get("runAsNonRoot")) is True, where
            assert own.get("runAsUser", pod.get("runAsUser", 1)) != 0, where
            assert own.get("readOnlyRootFilesystem") is True, where
            assert own.get("allowPrivilegeEscalation") is False, where
            assert own.get("privileged", False) is False, where
            assert own.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not own.get("capabilities", {}).get("add"), where
            seccomp = own.get("seccompProfile", pod.get("seccompProfile", {}))
            assert seccomp.get("type") == "RuntimeDefault", where
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_secrets_are_only_referenced(target: str) -> None:
    rendered = render(target)
    assert not [obj for obj in rendered if obj["kind"] == "Secret"]
    for obj in rendered:
        for name, _key in walk_secret_refs(obj):
            assert name == SECRET_NAME, f"{obj['metadata']['name']} refers to Secret {name}"
    # Every secret-looking variable comes from the Secret, never a literal.
    secretish = re.compile(r"(PASSWORD|TOKEN|SECRET|_KEY)$")
    for workload in workloads(target):
        for container in containers(workload):
            for name, entry in container_env(container).items():
                if secretish.search(name):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} is a literal"
    # Every secret setting in the config is a reference.
    config = enclave_config(target)
    for value in (
        config["database_url"],
        config["limiter_url"],
        config["metrics_token"],
        config["audit"]["signing_key"],
    ):
        assert value.startswith(("env:", "file:")), value


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_every_secret_key_is_in_the_documented_create_secret(target: str) -> None:
    documented = documented_secret_keys()
    referenced = {key for obj in render(target) for _, key in walk_secret_refs(obj)}
    assert None not in referenced, "mount single keys (items), not the whole Secret"
    missing = referenced - documented
    assert not missing, f"docs/operations.md never tells the user to create {sorted(missing)}"


def reachable_from(target: str, protected: dict[str, Any], port: int) -> set[str]:
    """Names of the workloads whose pods the NetworkPolicies let connect to ``port`` of
    ``protected``'s pods; ``{"*"}`` when some rule admits everyone."""
    labels = pod_labels(protected)
    policies = [
        policy
        for policy in objects(target, "NetworkPolicy")
        if matches(policy["spec"]["podSelector"], labels)
        and "Ingress" in policy["spec"]["policyTypes"]
    ]
    assert policies, f"no NetworkPolicy selects {protected['metadata']['name']}"
    allowed: set[str] = set()
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            ports = {entry.get("port") for entry in rule.get("ports", [])}
            if ports and port not in ports:
                continue
            peers = rule.get("from")
            if not peers:
                return {"*"}
            for peer in peers:
                if "ipBlock" in peer or "namespaceSelector" in peer:
                    return {"*"}
                allowed |= {
                    other["metadata"]["name"]
                    for other in workloads(target)
                    if matches(peer["podSelector"], pod_labels(other))
                }
    return allowed


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_only_the_control_plane_reaches_redis_postgres_and_runners(target: str) -> None:
    deny = one(target, "NetworkPolicy", "enclave-default-deny")
    assert deny["spec"]["podSelector"] == {} and "ingress" not in deny["spec"]
    assert reachable_from(target, one(target, "Deployment", "enclave-redis"), 6379) == {
        CONTROL_PLANE
    }
    for statefulset in objects(target, "StatefulSet"):
        if statefulset["metadata"]["name"] == "enclave-postgres":
            # The migration Job is the control plane's own image, run once.
            assert reachable_from(target, statefulset, 5432) == {CONTROL_PLANE, "enclave-migrate"}
    for runner in objects(target, "Deployment"):
        if runner["metadata"]["name"] == "enclave-runner":
            assert reachable_from(target, runner, 8091) == {CONTROL_PLANE}
    # The control plane itself answers anyone on its HTTP port (ingress, Prometheus, runners).
    assert reachable_from(target, control_plane(target), 8080) == {"*"}


@needs_kubectl
def test_the_bundled_postgres_is_pgvector_on_a_volume_and_guarded() -> None:
    target = "overlays/bundled-postgres"
    postgres = one(target, "StatefulSet", "enclave-postgres")
    (container,) = pod_spec(postgres)["containers"]
    assert container["image"].startswith("pgvector/pgvector:pg")
    (claim,) = postgres["spec"]["volumeClaimTemplates"]
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == "/var/lib/postgresql/data"
    assert container_env(container)["PGDATA"]["value"].startswith("/var/lib/postgresql/data/")
    assert one(target, "Service", "enclave-postgres")["spec"]["clusterIP"] == "None"
    policy = one(target, "NetworkPolicy", "enclave-postgres")
    assert "Egress" in policy["spec"]["policyTypes"] and not policy["spec"].get("egress")


@needs_kubectl
@pytest.mark.parametrize("target", DATABASE_TARGETS)
def test_the_migration_job_runs_enclave_db_migrate(target: str) -> None:
    job = one(target, "Job", "enclave-migrate")
    (container,) = pod_spec(job)["containers"]
    server = pod_spec(control_plane(target))["containers"][0]
    assert container["image"] == server["image"]
    assert "command" not in container  # the image's entrypoint: enclave
    assert container["args"] == ["db", "migrate"]
    assert cli_params("db", "migrate") >= {"--config"}  # the command exists
    assert pod_spec(job)["restartPolicy"] in {"OnFailure", "Never"}
    # It migrates the very database the replicas use.
    env, server_env = container_env(container), container_env(server)
    assert env["ENCLAVE_DATABASE_URL"]["value"] == "env:DATABASE_URL"
    assert enclave_config(target)["database_url"] == "env:DATABASE_URL"
    for name in ("DATABASE_URL", "POSTGRES_PASSWORD"):
        assert env.get(name) == server_env.get(name)
    assert "DATABASE_URL" in env


@needs_kubectl
@pytest.mark.parametrize("target", TARGETS)
def test_the_control_plane_rolls_and_stops_without_dropping_requests(target: str) -> None:
    deployment = control_plane(target)
    spec = pod_spec(deployment)
    (container,) = spec["containers"]
    config = enclave_config(target)
    assert config["cluster"]["replicas"] is True
    assert container["args"][0] == "serve"
    assert_cli_args_exist(container["args"][1:], "serve")

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == config["port"] == 8080
    for probe, path in (
        ("livenessProbe", "/livez"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/livez"),
    ):
        assert container[probe]["httpGet"]["path"] == path, probe
        assert container[probe]["httpGet"]["port"] in ("http", 8080), probe

    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] != 0
    # SIGTERM comes after preStop; Kubernetes kills at terminationGracePeriodSeconds.
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    shutdown = pre_stop + config["cluster"]["drain_s"] + config["cluster"]["grace_s"]
    assert spec["terminationGracePeriodSeconds"] >= shutdown
    assert pre_stop > 0

    # Replicas: the autoscaler owns the count, at least two, and a drain takes one.
    assert "replicas" not in deployment["spec"]
    hpa = one(target, "HorizontalPodAutoscaler", CONTROL_PLANE)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": CONTROL_PLANE,
    }
    assert hpa["spec"]["minReplicas"] >= 2
    assert hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = one(target, "PodDisruptionBudget", CONTROL_PLANE)
    assert matches(pdb["spec"]["selector"], pod_labels(deployment))
    assert pdb["spec"].get("maxUnavailable") == 1
    service = one(target, "Service", CONTROL_PLANE)
    assert matches({"matchLabels": service["spec"]["selector"]}, pod_labels(deployment))
    assert service["spec"]["ports"][0]["targetPort"] in ports


@needs_kubectl
def test_gpu_runners_request_gpus_and_join_the_control_plane() -> None:
    target = "overlays/gpu-runners"
    runner = one(target, "Deployment", "enclave-runner")
    spec = pod_spec(runner)
    (container,) = spec["containers"]
    resources = container["resources"]
    assert int(resources["limits"]["nvidia.com/gpu"]) >= 1
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"]
    assert spec["nodeSelector"] or spec.get("affinity")
    assert any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    # A second pod cannot surge onto a GPU the first still holds.
    assert runner["spec"]["strategy"]["type"] == "Recreate"

    args = container["args"]
    assert args[0] == "runner"
    assert_cli_args_exist(args[1:], "runner")
    options = dict(zip(args[1::2], args[2::2], strict=True))
    service = one(target, "Service", CONTROL_PLANE)
    assert options["--join"] == f"http://{CONTROL_PLANE}:{service['spec']['ports'][0]['port']}"
    token_variable = options["--token"].removeprefix("env:")
    env = container_env(container)
    assert "secretKeyRef" in env[token_variable]["valueFrom"]
    assert not token_variable.startswith("ENCLAVE_")
    port = options["--port"]
    assert options["--advertise-url"].endswith(f":{port}")
    assert {p["containerPort"] for p in container["ports"]} == {int(port)}
    # The runners' config knows the clearance they claim.
    assert options["--clearance"] in load_settings().classifications


@needs_kubectl
def test_other_overlays_have_no_gpu_runner() -> None:
    for target in TARGETS:
        if target != "overlays/gpu-runners":
            names = {obj["metadata"]["name"] for obj in workloads(target)}
            assert "enclave-runner" not in names, target


def documented_overlays() -> dict[str, str]:
    """The kustomization.yaml examples in the guide's Kubernetes section, by folder."""
    text = OPERATIONS_DOC.read_text()
    section = text[text.index("\n## Kubernetes") : text.index("\n## Single VM with compose")]
    found = {}
    for block in re.findall(r"```(?:yaml|bash)\n(.*?)```", section, flags=re.S):
        match = re.search(r"^# ([\w-]+)/kustomization\.yaml\n(.*?)(?=^EOF$|\Z)", block, re.S | re.M)
        if match:
            found[match.group(1)] = match.group(2)
    return found


@needs_kubectl
def test_the_guides_own_overlays_render(tmp_path: Path) -> None:
    """The guide's examples sit next to deploy/ (``../deploy/...``); here they sit in
    tmp_path, so that path is rewritten to reach the same folder."""
    examples = documented_overlays()
    assert set(examples) == {"my-enclave", "helm-render"}
    rendered = {}
    for folder, text in examples.items():
        where = tmp_path / folder
        where.mkdir()
        relative = os.path.relpath(DEPLOY, where)
        (where / "kustomization.yaml").write_text(text.replace("../deploy/", f"{relative}/"))
        shutil.copy(KUBERNETES / "base" / "enclave.yaml", where / "enclave.yaml")
        assert KUBECTL is not None
        result = subprocess.run(
            [KUBECTL, "kustomize", str(where)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, f"{folder}: {result.stderr}"
        rendered[folder] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]

    mine = rendered["my-enclave"]
    kinds = {obj["kind"] for obj in mine}
    assert {"ServiceMonitor", "StatefulSet", "Namespace"} <= kinds
    (configmap,) = [obj for obj in mine if obj["kind"] == "ConfigMap"]
    deployment = next(
        o for o in mine if o["kind"] == "Deployment" and o["metadata"]["name"] == "enclave"
    )
    volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]

    helm = rendered["helm-render"]
    assert "Namespace" not in {obj["kind"] for obj in helm}
    (job,) = [obj for obj in helm if obj["kind"] == "Job"]
    annotations = job["metadata"]["annotations"]
    assert set(annotations["helm.sh/hook"].split(",")) == {"post-install", "pre-upgrade"}
    assert annotations["argocd.argoproj.io/hook"] == "Sync"
    # Helm would read Go template syntax in the rendered objects.
    assert not any("{{" in yaml.safe_dump(obj) for obj in helm)


# --- The enclave.yaml files load with Enclave's own settings ----------------------------


def pod_environment(container: dict[str, Any]) -> dict[str, str]:
    """The environment Kubernetes gives the container: secrets as stand-ins,
    $(VAR) expanded as the kubelet expands it (earlier variables only)."""
    values: dict[str, str] = {}
    for entry in container.get("env", []):
        if "value" in entry:
            values[entry["name"]] = re.sub(
                r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                lambda m: values.get(m.group(1), m.group(0)),
                entry["value"],
            )
        elif "secretKeyRef" in entry["valueFrom"]:
            values[entry["name"]] = f"stand-in-{entry['valueFrom']['secretKeyRef']['key']}"
        else:
            values[entry["name"]] = f"stand-in-{entry['valueFrom']['fieldRef']['fieldPath']}"
    return values


def load_with(
    config: dict[str, Any],
    environment: dict[str, str],
    files: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """``load_settings`` on ``config`` with exactly ``environment`` as ENCLAVE_* and the
    references; ``file:`` paths are moved under tmp_path with ``files``' contents."""
    for name in list(os.environ):
        if name.startswith("ENCLAVE_"):
            monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    def relocate(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: relocate(value) for key, value in node.items()}
        if isinstance(node, str) and node.startswith("file:"):
            original = node.removeprefix("file:")
            assert original in files, f"{original} is not provided by the deployment"
            local = tmp_path / original.lstrip("/")
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_text(files[original])
            return f"file:{local}"
        return node

    relocated = relocate(config)
    relocated["home"] = str(tmp_path / "home")
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "enclave.yaml"
    path.write_text(yaml.safe_dump(relocated))
    return load_settings(path)


def signing_key_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )


@needs_kubectl
@pytest.mark.parametrize("target", ["overlays/external-postgres", "overlays/bundled-postgres"])
def test_the_configmap_loads_in_the_pods_environment(
    target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (container,) = pod_spec(control_plane(target))["containers"]
    environment = pod_environment(container)
    environment["ENCLAVE_ADMIN_KEY"] = "ek-stand-in-admin-key-0123456789"
    if target.endswith("external-postgres"):
        environment["DATABASE_URL"] = "postgresql+psycopg://enclave:pw@db.example.com/enclave"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    files = {f"{mounts['audit-key']}/audit-signing-key.pem": signing_key_pem()}
    settings = load_with(enclave_config(target), environment, files, tmp_path, monkeypatch)
    assert settings.cluster.replicas is True
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert settings.resolved_database_url.startswith("postgresql+psycopg://enclave:")
    assert environment["REDIS_URL"].startswith("redis://:stand-in-redis-password@enclave-redis:")
    # The default id (host name and a random suffix) is new at every start; a fixed
    # one would let a restarted container pass for the process that died.
    assert settings.cluster.replica_id is None

    # The migration Job has no config file, only its environment.
    (job,) = pod_spec(one(target, "Job", "enclave-migrate"))["containers"]
    job_environment = pod_environment(job)
    if target.endswith("external-postgres"):
        job_environment["DATABASE_URL"] = environment["DATABASE_URL"]
    job_settings = load_with({}, job_environment, {}, tmp_path / "job", monkeypatch)
    assert job_settings.resolved_database_url == settings.resolved_database_url


def test_the_compose_config_loads_in_the_replicas_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    service = compose["services"]["enclave-1"]
    environment = {
        name: str(value).replace("${ENCLAVE_ADMIN_KEY", "ek-stand-in-admin-key-0123456789")
        for name, value in service["environment"].items()
    }
    files = {
        f"/run/secrets/{name}": {
            "database_url": "postgresql+psycopg://enclave:pw@postgres:5432/enclave",
            "metrics_token": "stand-in-token",
            "audit_signing_key": signing_key_pem(),
        }[name]
        for name in service["secrets"]
    }
    config = yaml.safe_load((DEPLOY / "enclave.compose.yaml").read_text())
    settings = load_with(config, environment, files, tmp_path, monkeypatch)
    assert settings.cluster.replicas is True
    assert settings.cluster.replica_id is None
    assert settings.port == 8080


# --- Compose and haproxy -----------------------------------------------------------------


def haproxy_backend() -> dict[str, Any]:
    """The servers and health check of haproxy.cfg's backend (enough to cross-check)."""
    servers, check_uri, inter_s, fall = [], None, None, None
    for line in (DEPLOY / "haproxy.cfg").read_text().splitlines():
        words = line.split("#", 1)[0].split()
        if words[:1] == ["server"]:
            servers.append(words[2])
        elif words[:2] == ["http-check", "send"]:
            check_uri = words[words.index("uri") + 1]
        elif words[:1] == ["default-server"]:
            inter_s = float(words[words.index("inter") + 1].removesuffix("s"))
            fall = int(words[words.index("fall") + 1])
    return {"servers": servers, "check_uri": check_uri, "inter_s": inter_s, "fall": fall}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(ms|s|m)", duration)
    assert match, f"not a compose duration: {duration}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[match.group(2)]


def test_compose_runs_two_replicas_behind_haproxy_in_a_safe_order() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    config = yaml.safe_load((DEPLOY / "enclave.compose.yaml").read_text())
    replicas = sorted(name for name, s in services.items() if s.get("command", [""])[0] == "serve")
    assert len(replicas) == 2

    # haproxy sends to exactly these two, on their port, when /readyz says so, and
    # notices a draining replica before it stops accepting connections.
    backend = haproxy_backend()
    assert sorted(backend["servers"]) == [f"{name}:{config['port']}" for name in replicas]
    assert backend["check_uri"] == "/readyz"
    assert backend["inter_s"] * backend["fall"] < config["cluster"]["drain_s"]
    proxy = services["haproxy"]
    assert "./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in proxy["volumes"]
    assert set(proxy["depends_on"]) == set(replicas)
    assert proxy["ports"]

    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    ids = set()
    for name in replicas:
        service = services[name]
        ids.add(service["hostname"])
        assert "./enclave.compose.yaml:/etc/enclave/enclave.yaml:ro" in service["volumes"]
        assert service["command"] == ["serve", "--config", "/etc/enclave/enclave.yaml"]
        assert service["user"].split(":")[0] not in {"0", "root"}
        assert service["read_only"] is True and service["cap_drop"] == ["ALL"]
        assert seconds(service["stop_grace_period"]) >= (
            config["cluster"]["drain_s"] + config["cluster"]["grace_s"]
        )
        depends = {dep: cond["condition"] for dep, cond in service["depends_on"].items()}
        assert depends == {
            "postgres": "service_healthy",
            "redis": "service_healthy",
            "enclave-migrate": "service_completed_successfully",
        }
        assert "postgres" not in {p.split(":")[0] for p in service.get("ports", [])}
    assert len(ids) == 2, "each replica's id starts with its own hostname"
    assert services["enclave-migrate"]["command"] == ["db", "migrate"]

    # A service_healthy condition on a service without a healthcheck never comes true.
    for service in services.values():
        for dep, cond in service.get("depends_on", {}).items():
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], dep
    # Only haproxy is published; the data stores sit on an internal network.
    assert [name for name, s in services.items() if s.get("ports")] == ["haproxy"]
    assert compose["networks"]["backend"]["internal"] is True
    for store in ("postgres", "redis"):
        assert services[store]["networks"] == ["backend"]


def test_compose_secrets_are_files_outside_git() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    used = {name for s in compose["services"].values() for name in s.get("secrets", [])}
    assert used == set(compose["secrets"])
    for secret in compose["secrets"].values():
        assert secret["file"].startswith("./secrets/")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/secrets/database_url"], cwd=ROOT, check=False
    )
    assert ignored.returncode == 0, "deploy/secrets/ must be ignored by git"
    for path in (DEPLOY / "secrets").glob("*") if (DEPLOY / "secrets").exists() else []:
        tracked = subprocess.run(
            ["git", "ls-files", "--error-unmatch", str(path)], cwd=ROOT, capture_output=True
        )
        assert tracked.returncode != 0, f"{path} is tracked by git"


@pytest.mark.skipif(HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_haproxy_accepts_its_config() -> None:
    assert HAPROXY is not None
    result = subprocess.run(
        [HAPROXY, "-c", "-f", str(DEPLOY / "haproxy.cfg")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    # Offline, the replicas' names do not resolve and, without a network, Docker's DNS
    # address cannot even be connected; inside compose both work. Any other warning
    # is a real problem.
    expected = ("could not resolve address 'enclave-", "can't connect socket for nameserver")
    warnings = [line for line in output.splitlines() if "WARNING" in line]
    assert all(any(text in line for text in expected) for line in warnings), warnings
