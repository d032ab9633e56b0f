"""deploy/kubernetes checked without a cluster: every manifest against the Kubernetes API
schemas (kubernetes-validate ships them; nothing is fetched), and against regproxy itself:
the ConfigMap's config loads as `regproxy check` loads it with the volumes where the
Deployment mounts them, the Secrets hold the files it names, probes and ports match its
listeners, and the pod runs as the image's user with nothing writable but an emptyDir."""

from __future__ import annotations

import copy
import ipaddress
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import all_versions, major_minor

from proxy.conf.config import Config, load
from proxy.conf.snapshot import load_users
from proxy.core.problems import ConfigError
from proxy.http.tls import load_certificate, server_context
from tests.kube import KUBERNETES, ROOT, Pod, container, find, local, manifests, pod_volumes

# The oldest Kubernetes the manifests are written for, and the newest one kubernetes-validate
# had schemas for when written.
KUBERNETES_VERSIONS = ("1.30", "1.37")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_manifest_is_valid_for_kubernetes(version: str) -> None:
    shipped_schemas = {major_minor(v) for v in all_versions()}
    assert version in shipped_schemas, f"kubernetes-validate has no {version} schemas any more"
    kinds = set()
    for manifest in manifests():
        where = f"{manifest.path.relative_to(ROOT)}: {manifest.kind}/{manifest.name}"
        try:
            kubernetes_validate.validate(manifest.resource, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
        kinds.add(manifest.kind)
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Secret",
        "Service",
    }


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "template", "spec", "containers", 0, "securityContext", "readOnlyRootFS"), True),
        (("spec", "template", "spec", "containers", 0, "readinessProbe", "periodSeconds"), "10"),
        (("spec", "replicas"), -1.5),
    ],
)
def test_the_schemas_refuse_what_the_api_server_would(path: tuple[Any, ...], value: object) -> None:
    """The validation above can fail: strict schemas (unknown fields), types, formats."""
    deployment = copy.deepcopy(find("Deployment", "regproxy"))
    node = deployment
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, version, strict=True)


def test_each_kustomization_lists_every_manifest_next_to_it() -> None:
    for kustomization in sorted(KUBERNETES.rglob("kustomization.yaml")):
        directory = kustomization.parent
        listed = yaml.safe_load(kustomization.read_text())["resources"]
        present = [
            p.name
            for p in directory.iterdir()
            if (p.suffix == ".yaml" and p != kustomization) or (p / "kustomization.yaml").exists()
        ]
        assert sorted(listed) == sorted(present), directory
    names = [(m.kind, m.name) for m in manifests()]
    assert len(names) == len(set(names))


def shipped(root: Path) -> tuple[Pod, Config]:
    """The pod's volumes written under `root` as shipped, and the config loaded from them."""
    pod = Pod(find("Deployment", "regproxy"), root)
    pod.write()
    return pod, load(pod.config_path())


def test_configmap_config_passes_the_check_with_the_deployment_volumes(tmp_path: Path) -> None:
    try:
        pod, config = shipped(tmp_path)
    except ConfigError as exc:
        pytest.fail(f"the ConfigMap's regproxy.yaml does not pass regproxy check:\n{exc}")
    volumes = {
        local(mount_path, tmp_path): volume["name"]
        for mount_path, volume, _ in pod_volumes(pod.deployment)
    }
    for path in config.watched_files():
        assert path.parent in volumes, f"{path.name} is not in a mounted Secret or ConfigMap"
        assert path.name in pod.files[volumes[path.parent]], (
            f"volume {volumes[path.parent]} has no key {path.name}"
        )
        assert path.is_symlink() and path.is_file()  # the kubelet's `name -> ..data/name`
    assert config.acl is not None and config.acl_file is not None
    assert config.acl_file.parent == config.source.parent  # type: ignore[union-attr]
    assert find("Secret", "regproxy-tls")["type"] == "kubernetes.io/tls"
    assert volumes[config.tls_cert.parent] == volumes[config.tls_key.parent] == "tls"
    assert (config.tls_cert.name, config.tls_key.name) == ("tls.crt", "tls.key")


def test_shipped_secrets_let_nobody_in(tmp_path: Path) -> None:
    """The placeholders must be replaced: as shipped, regproxy refuses to start."""
    _, config = shipped(tmp_path)
    with pytest.raises(ConfigError, match="no usable users in this file"):
        load_users(config)
    assert load_certificate(server_context(), config.tls_cert, config.tls_key)


def test_probes_and_ports_match_the_config(tmp_path: Path) -> None:
    pod, config = shipped(tmp_path)
    spec = pod.deployment["spec"]["template"]["spec"]
    app = container(pod.deployment)
    ports = {port["name"]: port["containerPort"] for port in app["ports"]}
    assert config.metrics_listen is not None
    assert (ports["https"], ports["metrics"]) == (config.listen.port, config.metrics_listen.port)
    for listen in (config.listen, config.metrics_listen):
        assert not ipaddress.ip_address(listen.host).is_loopback  # Service and kubelet reach it
    readiness, liveness = app["readinessProbe"], app["livenessProbe"]
    assert (readiness["httpGet"]["path"], readiness["httpGet"]["port"]) == ("/health", "metrics")
    assert (liveness["httpGet"]["path"], liveness["httpGet"]["port"]) == ("/live", "metrics")
    # /health waits for the registry up to min(5, connect + read) seconds before its 503.
    assert readiness["timeoutSeconds"] > min(5.0, config.timeouts.connect + config.timeouts.read)
    service = find("Service", "regproxy")["spec"]
    assert [port["targetPort"] for port in service["ports"]] == ["https"]
    # SIGTERM: serving on for drain_delay (after a preStop sleep, if there is one), then the
    # drain: the kubelet must wait longer, or it kills uploads still running.
    pre_stop = app.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    stopping = pre_stop + config.timeouts.drain_delay + config.timeouts.drain
    assert spec["terminationGracePeriodSeconds"] > stopping
    # A terminating pod stays "serving" (ready) for kube-proxy through the drain delay: the
    # readiness probe's failures ("draining") take longer to count, the first maybe at once.
    assert config.timeouts.drain_delay > 0
    assert (readiness["failureThreshold"] - 1) * readiness["periodSeconds"] >= (
        config.timeouts.drain_delay
    )
    assert "failureThreshold" not in liveness or liveness["failureThreshold"] >= 3
    # The default worker count is the node's CPUs: the ConfigMap sets it to the CPU limit.
    text = pod.files["config"]["regproxy.yaml"].decode()
    assert "workers" in yaml.safe_load(text)
    assert config.workers == int(app["resources"]["limits"]["cpu"])
    assert set(app["resources"]["requests"]) == set(app["resources"]["limits"]) == {"cpu", "memory"}


def test_pod_runs_as_the_image_user_with_a_read_only_root(tmp_path: Path) -> None:
    pod, config = shipped(tmp_path)
    spec = pod.deployment["spec"]["template"]["spec"]
    app = container(pod.deployment)
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    uid = int(re.search(r"--uid (\d+)", dockerfile).group(1))  # type: ignore[union-attr]
    assert spec["securityContext"]["runAsUser"] == uid == 10001
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsGroup"]
    assert spec["automountServiceAccountToken"] is False
    security = app["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}  # nothing added: the port is >= 1024
    assert config.listen.port >= 1024
    writable = set()
    for mount_path, volume, mount in pod_volumes(pod.deployment):
        assert "subPath" not in mount, "subPath mounts never see Secret or ConfigMap updates"
        if "emptyDir" in volume:
            writable.add(mount_path)
        else:
            assert mount["readOnly"] is True
    # Several workers with metrics keep prometheus-client's files in a fresh dir under /tmp.
    assert config.workers > 1 and config.metrics_listen is not None
    assert writable == {"/tmp"}


def test_selectors_pick_the_right_pods(tmp_path: Path) -> None:
    def labels(name: str) -> dict[str, str]:
        return dict(find("Deployment", name)["spec"]["template"]["metadata"]["labels"])

    def within(selector: dict[str, str], pod_labels: dict[str, str]) -> bool:
        return selector.items() <= pod_labels.items()

    proxy, registry = labels("regproxy"), labels("registry")
    assert within(find("Service", "regproxy")["spec"]["selector"], proxy)
    assert within(find("PodDisruptionBudget", "regproxy")["spec"]["selector"]["matchLabels"], proxy)
    spread = find("Deployment", "regproxy")["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert all(within(c["labelSelector"]["matchLabels"], proxy) for c in spread)
    assert not within(find("Service", "registry")["spec"]["selector"], proxy)
    assert within(find("Service", "registry")["spec"]["selector"], registry)
    # The ConfigMap's upstream is the example registry's Service, which only regproxy reaches.
    _, config = shipped(tmp_path)
    service = find("Service", "registry")
    assert (
        config.upstream
        == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}"
    )
    policy = find("NetworkPolicy", "registry")["spec"]
    assert within(policy["podSelector"]["matchLabels"], registry)
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert within(source["podSelector"]["matchLabels"], proxy)
    registry_ports = container(find("Deployment", "registry"))["ports"]
    assert [p["port"] for p in rule["ports"]] == [p["name"] for p in registry_ports]


def test_the_replicas_share_state_through_the_example_redis(tmp_path: Path) -> None:
    """`state:` names redis-example's Service, reads the password from the mounted Secret
    (the same key the example Redis requires), and only regproxy's pods reach Redis."""
    pod, config = shipped(tmp_path)
    assert config.state.backend == "redis" and config.state.password_file is not None
    mounts = {volume["name"]: (path, volume) for path, volume, _ in pod_volumes(pod.deployment)}
    path, volume = mounts["redis"]
    assert volume["secret"] == {"secretName": "regproxy-redis", "defaultMode": 0o440}
    assert config.state.password_file == local(path, tmp_path) / "password"
    assert config.state.password_file.read_text() == "REPLACE"  # as projected
    secret = find("Secret", "regproxy-redis")
    assert set(secret["stringData"]) == {"password"}
    redis = container(find("Deployment", "redis"))
    (env,) = redis["env"]
    assert env["valueFrom"]["secretKeyRef"] == {"name": "regproxy-redis", "key": "password"}
    assert f"$({env['name']})" in redis["args"]
    service = find("Service", "redis")
    assert config.state.url == (
        f"redis://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/0"
    )
    assert [p["name"] for p in redis["ports"]] == [service["spec"]["ports"][0]["targetPort"]]
    policy = find("NetworkPolicy", "redis")["spec"]
    (rule,) = policy["ingress"]
    (source,) = rule["from"]
    assert source["podSelector"]["matchLabels"].items() <= (
        find("Deployment", "regproxy")["spec"]["template"]["metadata"]["labels"].items()
    )
    volumes = find("Deployment", "redis")["spec"]["template"]["spec"]["volumes"]
    assert "--appendonly" in redis["args"] and volumes[0]["persistentVolumeClaim"]
