"""The deployment files under deploy/: Kubernetes manifests against the Kubernetes API schemas
(kubernetes-validate, strict: unknown fields fail), the BentoCloud config against BentoML's own
deployment schema, and the facts they rest on checked against the code (probe routes, the image's
user, the drain time, the metric the autoscaler reads). No cluster: offline, in about a second.
"""

from __future__ import annotations

import json
import re
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import kubernetes_validate  # requirements-test.txt; its schemas ship in the package
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BENTOCLOUD = ROOT / "deploy" / "bentocloud" / "deployment.yaml"
#: the oldest Kubernetes minor the manifests promise to work on, and the newest the validator knows
K8S_VERSIONS = ("1.31.0", "1.37.0")


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and "kind" in doc:
                out.append((str(path.relative_to(ROOT)), doc))
    return out


DOCS = _docs()


def _one(kind: str, path: str | None = None) -> dict[str, Any]:
    found = [d for p, d in DOCS if d["kind"] == kind and (path is None or p == path)]
    assert len(found) == 1, f"expected one {kind} ({path or 'any file'}), found {len(found)}"
    return found[0]


DEPLOYMENTS = {p: d for p, d in DOCS if d["kind"] == "Deployment"}
MAIN = "deploy/k8s/deployment.yaml"
PER_POD = "deploy/k8s/per-pod-cache/deployment.yaml"


def _server(dep: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in dep["spec"]["template"]["spec"]["containers"] if c["name"] == "t2i-server"]
    return container


def _config() -> dict[str, str]:
    return _one("ConfigMap")["data"]


def test_the_expected_files_are_there():
    kinds = sorted({d["kind"] for _, d in DOCS})
    assert kinds == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Job", "PersistentVolumeClaim",
                     "PodDisruptionBudget", "Service", "StatefulSet"]
    assert set(DEPLOYMENTS) == {MAIN, PER_POD}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path,doc", DOCS, ids=[f"{p}:{d['kind']}" for p, d in DOCS])
def test_manifest_passes_the_kubernetes_schema(path, doc, version):
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{path} ({doc['kind']}) is not a valid Kubernetes {version} resource: {exc.message} "
                    f"at {'/'.join(map(str, exc.path))}")


def test_the_validator_is_strict():
    """A misspelt field must fail, not be ignored (the reason for strict mode)."""
    doc = yaml.safe_load((K8S / "deployment.yaml").read_text())
    _server(doc)["startupprobe"] = {"httpGet": {"path": "/readyz", "port": "http"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[0], strict=True)


def _bentoml_system_routes() -> set[str]:
    """The health routes BentoML adds to every service's HTTP app (read from BentoML itself)."""
    from bentoml._internal.server.base_app import BaseAppFactory

    class Probe(BaseAppFactory):
        name = "probe"

    return {route.path for route in BaseAppFactory.get_system_routes(object.__new__(Probe))}


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS))
def test_probes_hit_routes_bentoml_serves(path):
    served = _bentoml_system_routes()
    assert {"/livez", "/readyz"} <= served
    server = _server(DEPLOYMENTS[path])
    probes = {name: server[name]["httpGet"] for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for name, get in probes.items():
        assert get["path"] in served, f"{name} GETs {get['path']}, which BentoML does not serve"
        assert get["port"] in {p["name"] for p in server["ports"]} | {p["containerPort"] for p in server["ports"]}
    # readiness and start-up on /readyz: ready only once the engine has loaded (and 503 while draining)
    assert probes["startupProbe"]["path"] == probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/livez"


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS))
def test_startup_probe_allows_minutes_long_model_loads(path):
    probe = _server(DEPLOYMENTS[path])["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 600
    # the liveness probe gives a loaded server a minute before a restart
    live = _server(DEPLOYMENTS[path])["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= 60
    # BentoML's /readyz asks the engine and waits up to 5 s for it (runner_probe): the probe waits longer
    for name in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert _server(DEPLOYMENTS[path])[name]["timeoutSeconds"] > 5, name


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(p, d["spec"]["template"]["spec"]) for p, d in DOCS if d["kind"] in ("Deployment", "Job")]


@pytest.mark.parametrize("path,pod", _pod_specs(), ids=[p for p, _ in _pod_specs()])
def test_pods_run_as_bentomls_container_user_and_can_write_the_cache(path, pod):
    from bentoml._internal.container.generate import BENTO_UID_GID

    ctx = pod["securityContext"]
    assert ctx["runAsUser"] == ctx["runAsGroup"] == ctx["fsGroup"] == BENTO_UID_GID == 1034
    assert ctx["runAsNonRoot"] is True
    for c in pod.get("initContainers", []) + pod["containers"]:
        assert c["securityContext"]["allowPrivilegeEscalation"] is False
        (mount,) = [m for m in c["volumeMounts"] if m["name"] == "models"]
        # the Hugging Face cache and the url images' folder both live on the volume
        assert Path(_config()["HF_HOME"]).is_relative_to(mount["mountPath"]), f"{path}: {c['name']}"
        store_kind, _, folder = _config()["T2I_IMAGE_STORE"].partition(":")
        assert store_kind == "dir" and Path(folder).is_relative_to(mount["mountPath"])
        assert not Path(folder).is_relative_to(_config()["HF_HOME"])


def test_shared_cache_is_read_write_many():
    pvc = _one("PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for path in (MAIN, "deploy/k8s/model-pull-job.yaml"):
        doc = DEPLOYMENTS.get(path) or _one("Job")
        (vol,) = [v for v in doc["spec"]["template"]["spec"]["volumes"] if v["name"] == "models"]
        assert vol["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]


def test_model_pull_commands_download_the_configured_model():
    """The Job (shared cache) and the init container (per-pod cache) run `python -m t2i_core pull` for
    T2I_MODEL with downloads allowed; the server container keeps the image's HF_HUB_OFFLINE=1."""
    from t2i_core.__main__ import build_parser

    per_pod = DEPLOYMENTS[PER_POD]["spec"]["template"]["spec"]
    assert {v["name"]: v for v in per_pod["volumes"]}["models"].get("emptyDir") is not None
    (init,) = per_pod["initContainers"]
    (job,) = _one("Job")["spec"]["template"]["spec"]["containers"]
    for c in (init, job):
        assert c["args"][:3] == ["python", "-m", "t2i_core"]
        args = build_parser().parse_args(c["args"][3:])
        assert args.command == "pull" and args.model_id == "$(T2I_MODEL)"
        assert c["workingDir"] == "/home/bentoml/bento/src"  # where the Bento keeps t2i_core and models.json
        assert {e["name"]: e.get("value") for e in c["env"]}["HF_HUB_OFFLINE"] == "0"
        assert c["envFrom"] == [{"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}}]
    assert _config()["T2I_MODEL"] in {m["id"] for m in json.loads((ROOT / "models.json").read_text())["models"]}


def test_per_pod_variant_runs_the_same_server():
    main, alt = _server(DEPLOYMENTS[MAIN]), _server(DEPLOYMENTS[PER_POD])
    alt_requests = dict(alt["resources"]["requests"])
    assert alt_requests.pop("ephemeral-storage")
    assert {**alt, "resources": {**alt["resources"], "requests": alt_requests}} == main
    keep = ("securityContext", "terminationGracePeriodSeconds", "tolerations", "topologySpreadConstraints")
    main_pod, alt_pod = DEPLOYMENTS[MAIN]["spec"]["template"]["spec"], DEPLOYMENTS[PER_POD]["spec"]["template"]["spec"]
    assert {k: main_pod[k] for k in keep} == {k: alt_pod[k] for k in keep}


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS))
def test_termination_grace_covers_the_drain(path):
    """SIGTERM drains for up to T2I_REQUEST_TIMEOUT_S (t2i_core/common/shutdown.py); the preStop pause
    comes first and BentoML's own shutdown after: the grace period must hold all three."""
    from t2i_core.common.config import Settings

    pod = DEPLOYMENTS[path]["spec"]["template"]["spec"]
    server = _server(DEPLOYMENTS[path])
    command = server["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pause = int(command[1])
    timeout = int(_config().get("T2I_REQUEST_TIMEOUT_S", Settings().request_timeout_s))
    assert timeout >= Settings().request_timeout_s
    assert pod["terminationGracePeriodSeconds"] >= pause + timeout + 30


@pytest.mark.parametrize("path", sorted(DEPLOYMENTS))
def test_one_gpu_and_sized_resources(path):
    res = _server(DEPLOYMENTS[path])["resources"]
    assert res["limits"]["nvidia.com/gpu"] == 1
    assert res["requests"]["cpu"] and res["requests"]["memory"] and res["limits"]["memory"]
    # encoder processes: one per requested CPU beyond the first (unset, the node's CPUs would count)
    assert int(_config()["T2I_ENCODE_PROCESSES"]) == int(res["requests"]["cpu"]) - 1


def test_config_names_only_real_settings():
    from t2i_core.common.config import Settings

    known = {f"T2I_{f.name.upper()}" for f in fields(Settings)}
    named = set(_config())
    bentocloud = yaml.safe_load(BENTOCLOUD.read_text())
    named |= {e["name"] for e in bentocloud.get("envs", [])}
    named |= {e["name"] for s in bentocloud["services"].values() for e in s.get("envs", [])}
    assert {n for n in named if n.startswith("T2I_")} <= known
    assert int(_config()["T2I_MAX_BATCH_SIZE"]) >= 1 and int(_config()["T2I_MAX_IN_FLIGHT"]) >= 1


def test_selectors_match_the_pods():
    labels = DEPLOYMENTS[MAIN]["spec"]["template"]["metadata"]["labels"]
    assert DEPLOYMENTS[PER_POD]["spec"]["template"]["metadata"]["labels"] == labels
    for kind in ("PodDisruptionBudget",):
        assert _one(kind)["spec"]["selector"]["matchLabels"].items() <= labels.items()
    svc = next(d for p, d in DOCS if d["kind"] == "Service" and p.endswith("service.yaml"))
    assert svc["spec"]["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= {p["name"] for p in _server(DEPLOYMENTS[MAIN])["ports"]}


def test_disruption_budget_keeps_replicas_up():
    pdb = _one("PodDisruptionBudget")["spec"]
    assert pdb.get("maxUnavailable") == 1 and "minAvailable" not in pdb


def test_autoscaler_reads_a_metric_the_server_exports():
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": DEPLOYMENTS[MAIN]["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] <= DEPLOYMENTS[MAIN]["spec"]["replicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    name = metric["pods"]["metric"]["name"]
    source = (ROOT / "t2i_core" / "common" / "metrics.py").read_text()
    assert re.search(rf'name="{re.escape(name)}"', source), f"the server exports no metric {name}"
    # target: one batch of requests per pod
    assert int(metric["pods"]["target"]["averageValue"]) == int(_config()["T2I_MAX_BATCH_SIZE"])
    # the Prometheus adapter's rule publishes exactly that name
    values = yaml.safe_load((K8S / "prometheus-adapter" / "values.yaml").read_text())
    assert name in {rule["name"]["as"] for rule in values["rules"]["custom"]}


# --- BentoCloud ----------------------------------------------------------------------------------------


def _unknown_keys(data: Any, cls: Any, where: str = "") -> list[str]:
    """Keys BentoML's schema classes do not have (they accept and drop unknown keys silently)."""
    import attr

    origin = typing.get_origin(cls)
    args = typing.get_args(cls)
    if origin is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return _unknown_keys(data, inner[0], where) if len(inner) == 1 and data is not None else []
    if origin in (list, typing.List) and isinstance(data, list):
        return [k for i, item in enumerate(data) for k in _unknown_keys(item, args[0], f"{where}[{i}]")]
    if origin in (dict, typing.Dict) and isinstance(data, dict):
        return [k for key, value in data.items() for k in _unknown_keys(value, args[1], f"{where}.{key}")]
    if attr.has(cls) and isinstance(data, dict):
        hints = typing.get_type_hints(cls)
        names = {a.name for a in attr.fields(cls)}
        out = [f"{where}.{key}" for key in data if key not in names]
        return out + [k for key, value in data.items() if key in names
                      for k in _unknown_keys(value, hints[key], f"{where}.{key}")]
    return []


def test_bentocloud_config_matches_bentomls_deployment_schema():
    from bentoml._internal.cloud.deployment import DeploymentConfig
    from bentoml._internal.utils.cattr import bentoml_cattr

    config = yaml.safe_load(BENTOCLOUD.read_text())
    assert _unknown_keys(config, DeploymentConfig) == []
    structured = bentoml_cattr.structure({**config, "bento": "t2i-server:latest"}, DeploymentConfig)
    assert set(structured.services) == {"t2i", "t2i_engine"}
    for name, svc in structured.services.items():
        assert 1 <= svc.scaling.min_replicas <= svc.scaling.max_replicas, name
        assert svc.scaling.policy.scale_up_behavior in ("fast", "stable", "disabled")
        assert svc.scaling.policy.scale_down_behavior in ("fast", "stable", "disabled")
    assert structured.services["t2i_engine"].scaling.max_replicas > 1


def test_bentocloud_services_are_the_bentos_services():
    """The config's service names are the services service.py declares, and each has its own traffic
    concurrency (what BentoCloud scales on)."""
    import service

    config = yaml.safe_load(BENTOCLOUD.read_text())
    assert set(config["services"]) == {service.API.name, service.EngineService.name}
    assert service.EngineService.config["traffic"]["concurrency"] == service.SETTINGS.max_batch_size
    assert service.API.config["traffic"]["concurrency"] == service.SETTINGS.max_in_flight


# --- the probe routes, for real ----------------------------------------------------------------------


def test_probe_routes_answer_on_a_running_server(server):
    """The shared test server: the routes the probes GET answer 200 once it is ready."""
    import httpx

    paths = {_server(d)[name]["httpGet"]["path"] for d in DEPLOYMENTS.values()
             for name in ("startupProbe", "readinessProbe", "livenessProbe")}
    for path in sorted(paths):
        r = httpx.get(f"{server.url}{path}", timeout=10)
        assert r.status_code == 200, (path, r.status_code, r.text[:200])


def test_the_container_port_is_the_servers_port():
    config = yaml.safe_load((ROOT / "configuration.yaml").read_text())
    for dep in DEPLOYMENTS.values():
        assert {p["containerPort"] for p in _server(dep)["ports"]} == {config["services"]["t2i"]["http"]["port"]}


def test_the_replicas_share_their_state_in_the_redis_the_manifests_run():
    """T2I_STATE names the Redis Service of redis.yaml, on its port: no session affinity is needed."""
    from urllib.parse import urlsplit

    from t2i_core.state.open import check_spec

    state = _config()["T2I_STATE"]
    check_spec(state)
    url = urlsplit(state)
    redis_service = next(d for p, d in DOCS if d["kind"] == "Service" and p.endswith("redis.yaml"))
    assert url.hostname == redis_service["metadata"]["name"]
    assert url.port == redis_service["spec"]["ports"][0]["port"]
    statefulset = next(d for _, d in DOCS if d["kind"] == "StatefulSet")
    assert statefulset["spec"]["template"]["metadata"]["labels"] == redis_service["spec"]["selector"]
    for path, doc in DOCS:
        if doc["kind"] == "Service":
            assert "sessionAffinity" not in doc["spec"], path
