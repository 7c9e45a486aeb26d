"""The Kubernetes manifests (deploy/k8s): every overlay builds with `kubectl kustomize`, every
object validates against a pinned Kubernetes API version, and the security-relevant wiring holds:
Confidential Containers RuntimeClass, TEE backend and key broker flags, the initdata annotation
carrying exactly the document the server reads, TCP passthrough, a shared RWX store."""

from __future__ import annotations

import base64
import copy
import gzip
import hashlib
import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.33.0"  # the API version the manifests are validated against
ANNOTATION = "io.katacontainers.config.hypervisor.cc_init_data"
KUBECTL = shutil.which("kubectl")
OVERLAYS = {"kata-qemu-tdx": ("tdx", "sha384", 48), "kata-qemu-snp": ("sev-snp", "sha256", 32)}

needs_kubectl = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed (scripts/system-deps.sh installs it)"
)


def build(overlay: str) -> list[dict[str, Any]]:
    assert KUBECTL is not None
    out = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def initdata_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_initdata", K8S / "initdata.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def annotation_matches(docs: list[dict[str, Any]]) -> bool:
    """Whether the pod annotation is base64(gzip(the ConfigMap's initdata.toml))."""
    value = one(docs, "Deployment")["spec"]["template"]["metadata"]["annotations"][ANNOTATION]
    document = gzip.decompress(base64.b64decode(value, validate=True))
    return bool(document == one(docs, "ConfigMap")["data"]["initdata.toml"].encode())


@pytest.fixture(scope="module", params=sorted(OVERLAYS))
def built(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    if KUBECTL is None:
        pytest.skip("kubectl is not installed (scripts/system-deps.sh installs it)")
    return request.param, build(request.param)


@needs_kubectl
def test_every_object_validates_against_pinned_kubernetes(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = built
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ConfigMap",
        "Deployment",
        "Namespace",
        "PersistentVolumeClaim",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_validation_can_fail() -> None:
    """Negative control: the validator refuses a wrong type and an unknown field."""
    deployment = one(build("kata-qemu-tdx"), "Deployment")
    bad = copy.deepcopy(deployment)
    bad["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    bad = copy.deepcopy(deployment)
    bad["spec"]["template"]["spec"]["containers"][0]["tlsTermination"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


@needs_kubectl
def test_confidential_runtime_tee_and_key_broker(built: tuple[str, list[dict[str, Any]]]) -> None:
    overlay, docs = built
    tee, _, _ = OVERLAYS[overlay]
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["runtimeClassName"] == overlay
    assert deployment["spec"]["replicas"] >= 2
    assert pod["automountServiceAccountToken"] is False
    (container,) = pod["containers"]
    args = container["args"]
    assert args[0] == "serve"
    assert f"--tee={tee}" in args
    assert "--key-resource=default/blindinfer/sealing-key" in args
    assert any(re.fullmatch(r"--key-broker=https://\S+", a) for a in args)
    assert "--owner-initdata=/etc/blindinfer/initdata.toml" in args
    # The owner is named by measured configuration only, never by a host-given token.
    assert not any(a.startswith(("--owner-token", "--simulation")) for a in args)
    assert not container.get("env")
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True


@needs_kubectl
def test_initdata_annotation_is_the_document_the_server_reads(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    overlay, docs = built
    _, algorithm, field_size = OVERLAYS[overlay]
    assert annotation_matches(docs)
    deployment = one(docs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    config_map = one(docs, "ConfigMap")
    (volume,) = [v for v in pod["volumes"] if v["name"] == "initdata"]
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "initdata"]
    assert mount["mountPath"] == "/etc/blindinfer" and mount["readOnly"] is True

    raw = config_map["data"]["initdata.toml"].encode()
    doc = tomllib.loads(raw.decode())
    assert doc["version"] == "0.1.0" and doc["algorithm"] == algorithm
    # The digest must fit the TEE field it is measured into (MRCONFIGID 48, HOST_DATA 32).
    assert len(hashlib.new(algorithm, raw).digest()) <= field_size
    data = doc["data"]
    assert re.fullmatch(r"[0-9a-f]{64}", data["blindinfer-owner"])
    args = pod["containers"][0]["args"]
    (broker,) = [a.split("=", 1)[1] for a in args if a.startswith("--key-broker=")]
    assert tomllib.loads(data["aa.toml"])["token_configs"]["kbs"]["url"] == broker
    assert tomllib.loads(data["cdh.toml"])["kbc"]["url"] == broker
    assert "default ExecProcessRequest := false" in data["policy.rego"]
    assert "default SetPolicyRequest := false" in data["policy.rego"]

    # Negative control: a changed annotation no longer matches the document.
    tampered = copy.deepcopy(docs)
    other = base64.b64encode(gzip.compress(raw.replace(b"0.1.0", b"0.1.1"))).decode()
    one(tampered, "Deployment")["spec"]["template"]["metadata"]["annotations"][ANNOTATION] = other
    assert not annotation_matches(tampered)


@needs_kubectl
def test_tcp_passthrough_service_and_shared_store(
    built: tuple[str, list[dict[str, Any]]],
) -> None:
    _, docs = built
    service = one(docs, "Service")
    assert service["spec"]["type"] in ("LoadBalancer", "ClusterIP")
    (port,) = service["spec"]["ports"]
    assert port["protocol"] == "TCP" and port["targetPort"] == "https"
    # No TLS termination in front of the TEE: no annotations asking a cloud balancer for it.
    annotations = service["metadata"].get("annotations") or {}
    assert not any(re.search("ssl|tls|cert|backend-protocol", k) for k in annotations)
    assert not any(d["kind"] == "Ingress" for d in docs)

    pvc = one(docs, "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    (store,) = [v for v in pod["volumes"] if v["name"] == "store"]
    assert store["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "store"]
    assert f"--store-dir={mount['mountPath']}" in pod["containers"][0]["args"]


def test_committed_initdata_is_what_the_generator_renders() -> None:
    """The overlays' initdata.toml and annotation patch are in sync with initdata.py (same
    owner digest, KBS URL and agent policy as committed)."""
    gen = initdata_module()
    for overlay in OVERLAYS:
        out = K8S / "overlays" / overlay
        committed = (out / "initdata.toml").read_bytes()
        data = tomllib.loads(committed.decode())["data"]
        url = tomllib.loads(data["cdh.toml"])["kbc"]["url"]
        policy = (K8S / "agent-policy.rego").read_text()
        rendered = gen.render(overlay, data["blindinfer-owner"], url, policy).encode()
        assert rendered == committed, overlay
        assert (
            gen.patch(gen.annotation_value(rendered))
            == (out / "initdata-annotation.yaml").read_text()
        )


def test_generator_refuses_bad_input_and_is_deterministic(tmp_path: Path) -> None:
    gen = initdata_module()
    policy = "package agent_policy\n"
    with pytest.raises(SystemExit):
        gen.render("kata-qemu-tdx", "not-hex", "https://kbs:8080", policy)
    with pytest.raises(SystemExit):
        gen.render("kata-qemu-tdx", "ab" * 32, "https://kbs:8080'\nurl='http://evil", policy)
    with pytest.raises(SystemExit):
        gen.render("kata-qemu-tdx", "ab" * 32, "https://kbs:8080", "x = '''\n")
    a = gen.render("kata-qemu-snp", "ab" * 32, "https://kbs:8080", policy).encode()
    assert gen.annotation_value(a) == gen.annotation_value(a)  # gzip without a timestamp
    assert tomllib.loads(a.decode())["algorithm"] == "sha256"


def test_kbs_policy_names_the_key_resource_and_pins_initdata() -> None:
    rego = (K8S / "kbs" / "resource-policy.rego").read_text()
    assert re.search(r"^package policy$", rego, re.M)
    assert re.search(r"^default allow := false$", rego, re.M)
    assert '["default", "blindinfer", "sealing-key"]' in rego
    assert "mr_config_id" in rego and "host_data" in rego
    resources = tomllib.loads((K8S / "kbs" / "resources.toml").read_text())
    assert resources["resource"][0]["path"] == "default/blindinfer/sealing-key"
