"""The Helm chart (charts/cloudtutor): helm lint and template for every values
case, kubernetes-validate and checkov on what it renders (and checkov on the
Dockerfiles), and the deployment contract asserted on the rendered objects.

The tools are the real ones `make setup` fetches: helm into .tools/bin,
checkov into .tools/checkov, kubernetes-validate in the venv.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloudtutor.config.cloud import SERVICES, CloudConfig, load_cloud_config

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "cloudtutor"
HELM = ROOT / ".tools" / "bin" / "helm"
CHECKOV = ROOT / ".tools" / "checkov" / "bin" / "checkov"
KUBERNETES_VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
NAMESPACE = "cloudtutor"
RELEASE = "ct"

# Every values case CI renders: the defaults, the two CI cases and skaffold's profiles.
CASES = {
    "default": [],
    "gpu-external": [CHART / "ci" / "gpu-external-values.yaml"],
    "tls": [CHART / "ci" / "tls-values.yaml"],
    "skaffold-dev": [ROOT / "charts" / "values-dev.yaml"],
    "skaffold-gpu": [ROOT / "charts" / "values-gpu.yaml"],
}
# The checkov waivers of charts/checkov.yaml (each with its reason there).
WAIVED = {"CKV_K8S_15", "CKV_K8S_35", "CKV_K8S_43"}
GPU_SERVICES = {"superres", "labeler", "trainer"}


def _tool(path: Path) -> str:
    if not path.exists():
        pytest.fail(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path} is missing: run `make setup`")
    return str(path)


def _run(*cmd: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)


def _values_args(files: list[Path]) -> list[str]:
    return [arg for f in files for arg in ("-f", str(f))]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """`helm template` of every case, one manifest file each."""
    out = tmp_path_factory.mktemp("rendered")
    paths = {}
    for case, files in CASES.items():
        proc = _run(_tool(HELM), "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *_values_args(files))
        assert proc.returncode == 0, f"helm template ({case}) failed:\n{proc.stderr}"
        paths[case] = out / f"{case}.yaml"
        paths[case].write_text(proc.stdout)
    return paths


@pytest.fixture(scope="module")
def objects(rendered: dict[str, Path]) -> dict[str, list[dict]]:
    return {case: [d for d in yaml.safe_load_all(path.read_text()) if d] for case, path in rendered.items()}


def _by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def _pod_specs(docs: list[dict]) -> dict[str, dict]:
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in docs if d["kind"] in ("Deployment", "StatefulSet")}


# ---- the tools ----------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_helm_lint_strict(case: str) -> None:
    proc = _run(_tool(HELM), "lint", "--strict", str(CHART), *_values_args(CASES[case]))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_values_schema_refuses_what_the_chart_cannot_honour() -> None:
    helm = _tool(HELM)
    # No HPA on labeler or trainer (brief §10.6), and config keys the services would refuse.
    for bad in ("services.labeler.autoscaling.enabled=true", "services.trainer.autoscaling.enabled=true",
                "config.no_such_section.key=1", "mosquitto.maxQueuedMessages=0"):
        proc = _run(helm, "template", RELEASE, str(CHART), "--set", bad)
        assert proc.returncode != 0, f"--set {bad} was accepted"


def test_schema_config_sections_are_the_cloud_config_sections() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert set(schema["properties"]["config"]["properties"]) == set(CloudConfig.model_fields)


def test_kubernetes_validate_strict(rendered: dict[str, Path]) -> None:
    proc = _run(_tool(KUBERNETES_VALIDATE), "--strict", *map(str, rendered.values()))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The ServiceMonitor is a CRD without a schema here: a warning, the only one allowed.
    problems = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines()
                if not line.startswith("INFO") and "kind ServiceMonitor" not in line and line.strip()]
    assert not problems, problems


def test_checkov_finds_nothing_unwaived(rendered: dict[str, Path], tmp_path: Path) -> None:
    # One run over every rendered case and every Dockerfile (checkov takes a few seconds to start).
    files = [*rendered.values(), *sorted((ROOT / "docker").glob("Dockerfile*")), *sorted((ROOT / "edge-image").glob("Dockerfile*"))]
    args = [_tool(CHECKOV), "--config-file", str(ROOT / "charts" / "checkov.yaml"), "--framework", "kubernetes", "dockerfile",
            "-o", "json"]
    proc = _run(*args, *[a for f in files for a in ("-f", str(f))], cwd=tmp_path)
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert {r["check_type"] for r in reports} == {"kubernetes", "dockerfile"}
    failed = [(f["check_id"], f["file_path"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    assert not failed, failed
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Nothing is skipped silently: only the documented waivers and inline skips with a reason.
    for r in reports:
        for s in r["results"].get("skipped_checks", []):
            reason = (s.get("check_result") or {}).get("suppress_comment") or ""
            assert len(reason.strip()) > 20, f"{s['check_id']} in {s['file_path']} is skipped without a reason"
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 500  # the checks really ran on the objects


def test_checkov_waivers_are_documented() -> None:
    text = (ROOT / "charts" / "checkov.yaml").read_text()
    assert set(yaml.safe_load(text)["skip-check"]) == WAIVED
    for check in WAIVED:
        assert re.search(rf"^  # {check} \(.+\): \S.+", text, re.MULTILINE), f"{check} has no reason"


# ---- the contract on the rendered objects ------------------------------------------------


def test_six_service_deployments_each_serving_its_service(objects: dict[str, list[dict]]) -> None:
    for case, docs in objects.items():
        deployments = _by_kind(docs, "Deployment")
        deployments.pop(f"{RELEASE}-cloudtutor-scaler", None)  # scaler.enabled: test_scaler_may_only_scale_labeler_and_trainer
        assert set(deployments) == {f"{RELEASE}-cloudtutor-{s}" for s in SERVICES}, case
        for name in SERVICES:
            (container,) = deployments[f"{RELEASE}-cloudtutor-{name}"]["spec"]["template"]["spec"]["containers"]
            assert container["args"] == ["serve", name]


def test_broker_and_redis_bundled_by_default(objects: dict[str, list[dict]]) -> None:
    docs = objects["default"]
    sets = _by_kind(docs, "StatefulSet")
    assert set(sets) == {f"{RELEASE}-cloudtutor-mosquitto", f"{RELEASE}-cloudtutor-redis"}
    maps = _by_kind(docs, "ConfigMap")
    mosquitto = maps[f"{RELEASE}-cloudtutor-mosquitto"]["data"]["mosquitto.conf"]
    assert re.search(r"^max_queued_messages 1000$", mosquitto, re.MULTILINE)
    assert re.search(r"^message_size_limit 16777216$", mosquitto, re.MULTILINE)  # an integer Mosquitto parses
    assert "allow_anonymous false" in mosquitto and "acl_file /mosquitto/auth/acl" in mosquitto
    assert "topic readwrite cloudtutor/#" in maps[f"{RELEASE}-cloudtutor-mosquitto"]["data"]["services.acl"]
    redis = maps[f"{RELEASE}-cloudtutor-redis"]["data"]["redis.conf"]
    assert "appendonly yes" in redis and "requirepass" not in redis
    assert sets[f"{RELEASE}-cloudtutor-redis"]["spec"]["volumeClaimTemplates"]


def test_external_broker_and_redis_replace_the_bundled_ones(objects: dict[str, list[dict]]) -> None:
    docs = objects["gpu-external"]
    assert not _by_kind(docs, "StatefulSet")
    config = yaml.safe_load(_by_kind(docs, "ConfigMap")[f"{RELEASE}-cloudtutor-config"]["data"]["config.yaml"])
    assert config["mqtt"]["host"] == "mqtt.example.com" and config["mqtt"]["tls"]["ca_file"] == "/etc/cloudtutor/mqtt-ca/ca.crt"
    assert config["redis"]["url"].startswith("rediss://redis.example.com")
    spec = _pod_specs(docs)[f"{RELEASE}-cloudtutor-ingest"]
    assert {"name": "mqtt-ca", "secret": {"secretName": "external-mqtt-ca", "defaultMode": 0o444,
                                          "items": [{"key": "ca.crt", "path": "ca.crt"}]}} in spec["volumes"]


def test_every_container_is_non_root_with_a_read_only_root(objects: dict[str, list[dict]]) -> None:
    for case, docs in objects.items():
        for name, spec in _pod_specs(docs).items():
            pod = spec.get("securityContext", {})
            assert pod.get("runAsNonRoot") is True and pod.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
            assert spec.get("automountServiceAccountToken") is False, name
            for c in spec["containers"] + spec.get("initContainers", []):
                sc = c["securityContext"]
                where = f"{case}: {name}/{c['name']}"
                assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 10000, where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], where
                assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
                assert c["resources"]["limits"]["memory"] and c["resources"]["requests"]["cpu"], where


def test_probes_on_every_service(objects: dict[str, list[dict]]) -> None:
    for name, spec in _pod_specs(objects["default"]).items():
        for c in spec["containers"]:
            assert c.get("livenessProbe") and c.get("readinessProbe"), f"{name}/{c['name']}"
            if name.split("-")[-1] in SERVICES:
                assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
                assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
                assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
                assert {"name": "metrics", "containerPort": 9100, "protocol": "TCP"} in c["ports"]


def test_secrets_are_referenced_never_inlined(objects: dict[str, list[dict]]) -> None:
    for case, docs in objects.items():
        secrets = _by_kind(docs, "Secret")
        for name, spec in _pod_specs(docs).items():
            for c in spec["containers"] + spec.get("initContainers", []):
                for env in c.get("env", []):
                    if re.search(r"PASSWORD|SECRET|TOKEN|KEY", env["name"]):
                        assert "value" not in env and "secretKeyRef" in env["valueFrom"], f"{case}: {name} {env['name']}"
        # Nothing secret in a ConfigMap, and no Secret's value anywhere outside its Secret.
        text_outside = yaml.safe_dump([d for d in docs if d["kind"] != "Secret"])
        for cm in _by_kind(docs, "ConfigMap").values():
            for data in cm["data"].values():
                assert not re.search(r"password:|requirepass|PRIVATE KEY", data), cm["metadata"]["name"]
        for secret in secrets.values():
            for value in (secret.get("data") or {}).values():
                if value:
                    assert value not in text_outside and base64.b64decode(value).decode() not in text_outside


def test_secret_references_resolve(objects: dict[str, list[dict]]) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for case, docs in objects.items():
        overrides = [yaml.safe_load(f.read_text()) for f in CASES[case]]
        existing = {v for o in [values, *overrides] for v in _existing_secret_names(o)}
        created = set(_by_kind(docs, "Secret"))
        for name, spec in _pod_specs(docs).items():
            refs = {e["valueFrom"]["secretKeyRef"]["name"] for c in spec["containers"] + spec.get("initContainers", [])
                    for e in c.get("env", []) if "valueFrom" in e}
            refs |= {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
            assert refs <= created | existing, f"{case}: {name} refers to {refs - created - existing}"


def _existing_secret_names(node: object) -> list[str]:
    out = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("existingSecret", "devicesSecret", "caSecret") and value:
                out.append(value)
            out.extend(_existing_secret_names(value))
    return out


def test_configmap_is_valid_cloud_config_with_the_pods_environment(objects: dict[str, list[dict]], tmp_path: Path) -> None:
    # The services refuse unknown keys at start: the rendered file and the
    # variables the pods set must load through the real loader.
    for case, docs in objects.items():
        path = tmp_path / f"{case}.yaml"
        path.write_text(_by_kind(docs, "ConfigMap")[f"{RELEASE}-cloudtutor-config"]["data"]["config.yaml"])
        for name, spec in _pod_specs(docs).items():
            if name.split("-")[-1] not in SERVICES:
                continue
            env = {e["name"]: e.get("value", "from-a-secret") for e in spec["containers"][0]["env"]
                   if e["name"].startswith("CLOUDTUTOR_") and e["name"] != "CLOUDTUTOR_CONFIG"}
            config = load_cloud_config(path, env=env)
            assert config.metrics_port == 9100 and config.mqtt.password is not None
            assert str(config.publisher.signing_key).startswith("/etc/cloudtutor/signing/")


def test_hpa_only_for_ingest_and_superres(objects: dict[str, list[dict]]) -> None:
    hpas = _by_kind(objects["default"], "HorizontalPodAutoscaler")
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas.values()} == {f"{RELEASE}-cloudtutor-ingest", f"{RELEASE}-cloudtutor-superres"}
    deployments = _by_kind(objects["default"], "Deployment")
    assert "replicas" not in deployments[f"{RELEASE}-cloudtutor-ingest"]["spec"]  # the HPA owns it
    for name in ("trainer", "publisher", "controller"):  # never two at once, even in a rollout
        spec = deployments[f"{RELEASE}-cloudtutor-{name}"]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"]["type"] == "Recreate"
    assert deployments[f"{RELEASE}-cloudtutor-labeler"]["spec"]["strategy"]["type"] == "RollingUpdate"


def test_scaler_may_only_scale_labeler_and_trainer(objects: dict[str, list[dict]]) -> None:
    assert f"{RELEASE}-cloudtutor-scaler" not in _by_kind(objects["default"], "Deployment"), "off by default"
    docs = objects["gpu-external"]  # the CI case with scaler.enabled
    name = f"{RELEASE}-cloudtutor-scaler"
    (rule,) = _by_kind(docs, "Role")[name]["rules"]
    assert rule == {"apiGroups": ["apps"], "resources": ["deployments/scale"], "verbs": ["get", "patch"],
                    "resourceNames": [f"{RELEASE}-cloudtutor-labeler", f"{RELEASE}-cloudtutor-trainer"]}
    binding = _by_kind(docs, "RoleBinding")[name]
    assert binding["roleRef"]["name"] == name and binding["subjects"][0]["name"] == name
    pod = _by_kind(docs, "Deployment")[name]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    assert container["args"] == ["scaler"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["CLOUDTUTOR_SCALER__TRAINER_DEPLOYMENT"] == f"{RELEASE}-cloudtutor-trainer"
    assert env["CLOUDTUTOR_SCALER__DEVICES_PER_TRAINER"] == "6"
    # The in-cluster config's token, CA and namespace, from a projected volume (short-lived token).
    (token,) = [v for v in pod["volumes"] if v["name"] == "api-token"]
    sources = token["projected"]["sources"]
    assert sources[0]["serviceAccountToken"]["expirationSeconds"] <= 3600
    assert any(m["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount" for m in container["volumeMounts"])
    # No HPA on the two it scales (brief §10.6).
    hpas = {h["spec"]["scaleTargetRef"]["name"] for h in _by_kind(docs, "HorizontalPodAutoscaler").values()}
    assert not hpas & set(rule["resourceNames"])
    # Nor a replica count: `helm upgrade` would reset what the scaler set.
    deployments = _by_kind(docs, "Deployment")
    assert all("replicas" not in deployments[d]["spec"] for d in rule["resourceNames"])
    assert all("replicas" in _by_kind(objects["default"], "Deployment")[d]["spec"] for d in rule["resourceNames"])


def test_pdbs_network_policies_and_models_volume(objects: dict[str, list[dict]]) -> None:
    docs = objects["default"]
    pdbs = _by_kind(docs, "PodDisruptionBudget")
    assert {f"{RELEASE}-cloudtutor-{s}" for s in (*SERVICES, "mosquitto", "redis")} == set(pdbs)
    policies = _by_kind(docs, "NetworkPolicy")
    assert set(policies) == {f"{RELEASE}-cloudtutor-{p}" for p in ("services", "mosquitto", "redis")}
    redis_from = policies[f"{RELEASE}-cloudtutor-redis"]["spec"]["ingress"][0]["from"]
    assert redis_from and all("podSelector" in peer for peer in redis_from)  # only the services reach Redis
    assert _by_kind(docs, "PersistentVolumeClaim")
    for name, spec in _pod_specs(docs).items():
        if name.split("-")[-1] in SERVICES:
            assert any(v.get("persistentVolumeClaim", {}).get("readOnly") for v in spec["volumes"]), name


def test_gpu_requests_only_where_asked(objects: dict[str, list[dict]]) -> None:
    for name, spec in _pod_specs(objects["gpu-external"]).items():
        service = name.split("-")[-1]
        (c,) = spec["containers"]
        gpus = c["resources"]["limits"].get("nvidia.com/gpu")
        if service in GPU_SERVICES:
            assert gpus == (2 if service == "trainer" else 1) and "cloudtutor-cuda:0.1.0-ci" in c["image"]
            assert spec["runtimeClassName"] == "nvidia"
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
            assert {"name": "CLOUDTUTOR_MODELS__DEVICE", "value": "cuda"} in c["env"]
        else:
            assert gpus is None and "cuda" not in c["image"]
    for spec in _pod_specs(objects["default"]).values():
        assert "nvidia.com/gpu" not in spec["containers"][0]["resources"].get("limits", {})


def test_tls_listener_and_service_monitor(objects: dict[str, list[dict]]) -> None:
    docs = objects["tls"]
    conf = _by_kind(docs, "ConfigMap")[f"{RELEASE}-cloudtutor-mosquitto"]["data"]["mosquitto.conf"]
    # The TLS listener is the devices' one, with client id = user name.
    assert re.search(r"^listener 8883\ncertfile /mosquitto/tls/tls.crt\n(.+\n)*use_username_as_clientid true$", conf, re.MULTILINE)
    services = _by_kind(docs, "Service")
    devices = services[f"{RELEASE}-cloudtutor-mosquitto-devices"]["spec"]
    assert devices["type"] == "LoadBalancer" and [p["port"] for p in devices["ports"]] == [8883]
    in_cluster = services[f"{RELEASE}-cloudtutor-mosquitto"]["spec"]
    assert in_cluster["type"] == "ClusterIP" and [p["port"] for p in in_cluster["ports"]] == [1883]
    spec = _pod_specs(docs)[f"{RELEASE}-cloudtutor-mosquitto"]
    assert {"name": "tls", "secret": {"secretName": "mosquitto-tls", "defaultMode": 0o440}} in spec["volumes"]
    (monitor,) = _by_kind(docs, "ServiceMonitor").values()
    assert monitor["metadata"]["labels"]["release"] == "prometheus"
    metrics_services = [s for s in _by_kind(docs, "Service").values() if s["metadata"]["labels"].get("app.kubernetes.io/metrics")]
    assert len(metrics_services) == len(SERVICES)


def test_generated_signing_key_is_one_the_publisher_loads(objects: dict[str, list[dict]], tmp_path: Path) -> None:
    from cloudtutor.signing import load_private_key

    secret = _by_kind(objects["default"], "Secret")[f"{RELEASE}-cloudtutor-signing-key"]
    path = tmp_path / "signing-key.pem"
    path.write_bytes(base64.b64decode(secret["data"]["signing-key.pem"]))
    load_private_key(path)  # Ed25519, PKCS8 PEM, as cloudtutor.signing writes it


def test_yamllint_on_hand_written_yaml() -> None:
    files = [CHART / "values.yaml", CHART / "Chart.yaml", *sorted((CHART / "ci").glob("*.yaml")),
             *sorted((ROOT / "charts").glob("*.yaml")), ROOT / "skaffold.yaml", ROOT / "edge-image" / "compose.yaml"]
    config = "{extends: default, rules: {line-length: {max: 140}, document-start: disable, truthy: {check-keys: false}, comments: {min-spaces-from-content: 1}}}"
    proc = _run(sys.executable, "-m", "yamllint", "-s", "-d", config, *map(str, files))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_readme_documents_every_value_with_its_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    whole = {"resources", "nodeSelector", "affinity", "annotations", "podAnnotations", "labels",
             "podSecurityContext", "containerSecurityContext", "config"}  # documented as one value

    def leaves(node: dict, path: str = "") -> dict[str, object]:
        out: dict[str, object] = {}
        for key, value in node.items():
            dotted = f"{path}{key}"
            if isinstance(value, dict) and value and key not in whole:
                out.update(leaves(value, dotted + "."))
            else:
                out[dotted] = value
        return out

    expected = {k: v for k, v in leaves(values).items() if not k.startswith("services.")}
    table = dict(re.findall(r"^\| `([^`]+)` \| `(.*)` \| .+ \|$", (ROOT / "charts" / "README.md").read_text(), re.MULTILINE))
    assert set(table) == set(expected), set(table) ^ set(expected)
    for key, default in table.items():
        assert json.loads(default) == expected[key], key
