"""deploy/kubernetes/ only ever runs on clusters elsewhere, so it is checked here: each manifest
against its schema (DaskCluster: the operator's own CRD, tests/data/kubernetes/; the Job's pod:
the PodSpec schema in that CRD; the rest of Job and the PVC: the fields Kubernetes defines),
unknown fields rejected as `kubectl apply` does by default, and the job's command parsed by the
CLI's own parser and its wrapper script run, so that a renamed flag or a mistyped field fails
here rather than on someone's cluster."""

from __future__ import annotations

import copy
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dask_datalog.cluster.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
CRD = ROOT / "tests" / "data" / "kubernetes" / "daskcluster-crd.yaml"

DNS_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
METADATA = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": DNS_NAME, "maxLength": 63},
        "namespace": {"type": "string", "pattern": DNS_NAME},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with every field it does not name refused: the API server drops such a field
    (a typo such as ``limit:`` would silently go), and kubectl's default validation refuses it."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if not out.get("x-kubernetes-preserve-unknown-fields"):
            out.setdefault("additionalProperties", False)
    elif isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if "items" in out:
        out["items"] = strict(out["items"])
    return out


def resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": api_version},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
    }


def daskcluster_schema() -> dict[str, Any]:
    # libyaml's loader where PyYAML has it: the CRD is 280 kB of YAML.
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == "DaskCluster"
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(v1["schema"]["openAPIV3Schema"])
    whole = resource(f"{crd['spec']['group']}/v1", "DaskCluster", schema["properties"]["spec"])
    whole["properties"]["status"] = schema["properties"]["status"]
    return whole


def pod_spec_schema(cluster: dict[str, Any]) -> dict[str, Any]:
    """Kubernetes' PodSpec, as the operator's CRD embeds it for its workers."""
    return cluster["properties"]["spec"]["properties"]["worker"]["properties"]["spec"]


def job_schema(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """batch/v1 Job: the JobSpec fields a run may want, the pod template by the real PodSpec."""
    counts = ["activeDeadlineSeconds", "backoffLimit", "completions", "parallelism", "ttlSecondsAfterFinished"]
    rule = {
        "type": "object",
        "required": ["action"],
        "additionalProperties": False,
        "properties": {
            "action": {"enum": ["FailJob", "FailIndex", "Ignore", "Count"]},
            "onExitCodes": {
                "type": "object",
                "required": ["operator", "values"],
                "additionalProperties": False,
                "properties": {
                    "containerName": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn"]},
                    "values": {"type": "array", "minItems": 1, "items": {"type": "integer"}},
                },
            },
            "onPodConditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["type"],
                    "additionalProperties": False,
                    "properties": {"type": {"type": "string"}, "status": {"enum": ["True", "False", "Unknown"]}},
                },
            },
        },
    }
    spec = {
        "type": "object",
        "required": ["template"],
        "additionalProperties": False,
        "properties": {
            **{name: {"type": "integer", "minimum": 0} for name in counts},
            "suspend": {"type": "boolean"},
            "podFailurePolicy": {
                "type": "object",
                "required": ["rules"],
                "additionalProperties": False,
                "properties": {"rules": {"type": "array", "items": rule}},
            },
            "template": {
                "type": "object",
                "required": ["spec"],
                "additionalProperties": False,
                "properties": {"metadata": {**METADATA, "required": []}, "spec": pod_spec},
            },
        },
    }
    return resource("batch/v1", "Job", spec)


def pvc_schema() -> dict[str, Any]:
    quantities = {"type": "object", "additionalProperties": {"type": "string"}}
    spec = {
        "type": "object",
        "required": ["accessModes", "resources"],
        "additionalProperties": False,
        "properties": {
            "accessModes": {
                "type": "array",
                "minItems": 1,
                "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]},
            },
            "storageClassName": {"type": "string"},
            "volumeMode": {"enum": ["Filesystem", "Block"]},
            "resources": {
                "type": "object",
                "required": ["requests"],
                "additionalProperties": False,
                "properties": {"requests": {**quantities, "required": ["storage"]}, "limits": quantities},
            },
        },
    }
    return resource("v1", "PersistentVolumeClaim", spec)


def deployment_schema(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """apps/v1 Deployment: the DeploymentSpec fields a service may want, its pod by the real PodSpec."""
    labels = {"type": "object", "additionalProperties": {"type": "string"}}
    spec = {
        "type": "object",
        "required": ["selector", "template"],
        "additionalProperties": False,
        "properties": {
            "replicas": {"type": "integer", "minimum": 0},
            "strategy": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"type": {"enum": ["Recreate", "RollingUpdate"]}, "rollingUpdate": {"type": "object"}},
            },
            "selector": {
                "type": "object",
                "required": ["matchLabels"],
                "additionalProperties": False,
                "properties": {"matchLabels": labels},
            },
            "template": {
                "type": "object",
                "required": ["metadata", "spec"],
                "additionalProperties": False,
                "properties": {"metadata": {**METADATA, "required": ["labels"]}, "spec": pod_spec},
            },
        },
    }
    return resource("apps/v1", "Deployment", spec)


def service_schema(cluster: dict[str, Any]) -> dict[str, Any]:
    """v1 Service: Kubernetes' ServiceSpec, as the operator's CRD embeds it for the scheduler."""
    return resource("v1", "Service", cluster["properties"]["spec"]["properties"]["scheduler"]["properties"]["service"])


@functools.cache
def schemas() -> dict[tuple[str, str], dict[str, Any]]:
    cluster = daskcluster_schema()
    return {
        ("kubernetes.dask.org/v1", "DaskCluster"): cluster,
        ("batch/v1", "Job"): job_schema(pod_spec_schema(cluster)),
        ("v1", "PersistentVolumeClaim"): pvc_schema(),
        ("apps/v1", "Deployment"): deployment_schema(pod_spec_schema(cluster)),
        ("v1", "Service"): service_schema(cluster),
    }


def documents() -> list[tuple[str, dict[str, Any]]]:
    found = [
        (f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in sorted(MANIFESTS.glob("*.y*ml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]
    assert found, f"no manifests under {MANIFESTS}"
    return found


def the(kind: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in documents() if doc["kind"] == kind]
    return doc


def errors(doc: dict[str, Any]) -> list[str]:
    schema = schemas().get((doc.get("apiVersion"), doc.get("kind")))
    assert schema is not None, f"no schema for {doc.get('apiVersion')} {doc.get('kind')}: add one to this test"
    found = jsonschema.Draft202012Validator(schema).iter_errors(doc)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@pytest.mark.parametrize("doc", [doc for _, doc in documents()], ids=[name for name, _ in documents()])
def test_manifest_matches_its_schema(doc: dict[str, Any]) -> None:
    assert errors(doc) == []


def _worker(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["worker"]["spec"]["containers"][0]


MUTATIONS = {
    # The CRD types quantities as strings: the API server refuses a bare 1.
    "unquoted GPU count": ("DaskCluster", lambda d: _worker(d)["resources"]["limits"].update({"nvidia.com/gpu": 1})),
    "replicas as a string": ("DaskCluster", lambda d: d["spec"]["worker"].update(replicas="2")),
    "misspelled field": ("DaskCluster", lambda d: _worker(d).update(limit=_worker(d).pop("resources"))),
    "args not a list": ("Job", lambda d: d["spec"]["template"]["spec"]["containers"][0].update(args="dask-datalog")),
    "unknown failure action": ("Job", lambda d: d["spec"]["podFailurePolicy"]["rules"][0].update(action="Retry")),
    "PVC without a size": ("PersistentVolumeClaim", lambda d: d["spec"]["resources"]["requests"].clear()),
    "replicas of the service as a string": ("Deployment", lambda d: d["spec"].update(replicas="1")),
    "unknown strategy": ("Deployment", lambda d: d["spec"]["strategy"].update(type="Replace")),
    "service port as a string": ("Service", lambda d: d["spec"]["ports"][0].update(port="8780")),
    "misspelled service field": ("Service", lambda d: d["spec"].update(selectors=d["spec"].pop("selector"))),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_schema_rejects_a_broken_manifest(name: str) -> None:
    """The validation can fail: each of these edits to a valid manifest is an error."""
    kind, mutate = MUTATIONS[name]
    doc = copy.deepcopy(the(kind))
    mutate(doc)
    assert errors(doc), name


def test_cluster_job_and_volume_fit_together() -> None:
    """The job reaches the scheduler's Service, waits for as many workers as the cluster has,
    and every path of the run is on the volume that the workers mount at the same place."""
    cluster, job, pvc = the("DaskCluster"), the("Job"), the("PersistentVolumeClaim")
    pod = job["spec"]["template"]["spec"]
    (run,) = pod["containers"]
    (wait,) = pod["initContainers"]
    argv = job_argv(run)
    args = build_parser().parse_args(argv + ["--checkpoint", env(run)["CHECKPOINT"]])

    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert args.scheduler == f"tcp://{cluster['metadata']['name']}-scheduler:{ports['tcp-comm']}"
    assert env(wait)["DASK_SCHEDULER_ADDRESS"] == args.scheduler
    assert int(env(wait)["WORKERS"]) == cluster["spec"]["worker"]["replicas"]
    compile(wait["args"][-1], "wait-for-workers", "exec")
    assert args.backend == "cupy" and args.command == "run"

    assert "ReadWriteMany" in pvc["spec"]["accessModes"]
    claim = pvc["metadata"]["name"]
    worker_pod = cluster["spec"]["worker"]["spec"]
    (mount,) = {mount_path(worker_pod, claim), mount_path(pod, claim)}
    for path in (args.program, args.fact_dir, Path(args.output_dir), args.stats, args.checkpoint):
        assert path.is_relative_to(mount), path

    policy = job["spec"]["podFailurePolicy"]["rules"]
    assert pod["restartPolicy"] == "Never"  # Kubernetes requires it with a podFailurePolicy
    assert {r["onExitCodes"]["containerName"] for r in policy if "onExitCodes" in r} == {run["name"]}
    images = {c["image"] for c in [*pod["containers"], *pod["initContainers"], *containers(cluster)]}
    assert len(images) == 1, f"the client and the workers must run one build: {images}"
    assert _worker(cluster)["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert _worker(cluster)["args"][:3] == ["dask", "cuda", "worker"]


def test_the_service_reaches_the_cluster_and_its_service_reaches_it() -> None:
    """service.yaml: `serve` (its arguments parsed by the CLI's parser) on the DaskCluster's
    scheduler, its state on the volume the workers mount at the same place (they read the jobs'
    uploads there), its tokens from a Secret; the Service and the probes on its port; one
    replica, replaced whole (one SQLite writer)."""
    cluster, deployment, service = the("DaskCluster"), the("Deployment"), the("Service")
    pod = deployment["spec"]["template"]["spec"]
    (serve,) = pod["containers"]
    assert serve["args"][0] == "dask-datalog"
    args = build_parser().parse_args(serve["args"][1:])
    assert args.command == "serve"
    ports = {p["name"]: p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert args.scheduler == f"tcp://{cluster['metadata']['name']}-scheduler:{ports['tcp-comm']}"
    assert args.host == "0.0.0.0"

    claim = the("PersistentVolumeClaim")["metadata"]["name"]
    (mount,) = {mount_path(cluster["spec"]["worker"]["spec"], claim), mount_path(pod, claim)}
    for path in (args.state_dir, *args.root):
        assert path.is_relative_to(mount), path
    (secret,) = [v for v in pod["volumes"] if "secret" in v]
    (tokens,) = [m for m in serve["volumeMounts"] if m["name"] == secret["name"]]
    assert args.token_file.parent == Path(tokens["mountPath"]) and tokens["readOnly"]

    (http,) = serve["ports"]
    assert http["containerPort"] == args.port
    for probe in (serve["readinessProbe"], serve["livenessProbe"]):
        assert probe["httpGet"]["port"] == http["name"] and probe["httpGet"]["path"] == "/openapi.json"
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == labels == service["spec"]["selector"]
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == http["name"] and port["port"] == args.port
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
    assert {serve["image"]} == {c["image"] for c in containers(cluster)}, "the service and the workers run one build"


def containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    return [*cluster["spec"]["scheduler"]["spec"]["containers"], *cluster["spec"]["worker"]["spec"]["containers"]]


def env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def mount_path(pod: dict[str, Any], claim: str) -> Path:
    (volume,) = [v["name"] for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
    (path,) = [m["mountPath"] for c in pod["containers"] for m in c.get("volumeMounts", []) if m["name"] == volume]
    return Path(path)


def job_argv(run: dict[str, Any]) -> list[str]:
    """The run's own arguments: ``sh -c SCRIPT dask-datalog ARGS...`` in the container's args."""
    sh, dash_c, _script, name, *argv = run["args"]
    assert (sh, dash_c, name) == ("sh", "-c", "dask-datalog")
    return argv


FAKE_CLI = """#!{python}
import json, os, signal, sys, time
log, mode, checkpoint = os.environ["FAKE_LOG"], os.environ["FAKE_MODE"], sys.argv[-1]
with open(log, "w") as f:
    json.dump(sys.argv[1:], f)
os.makedirs(checkpoint, exist_ok=True)
if mode == "sigterm":
    terms = []
    signal.signal(signal.SIGTERM, lambda *_: terms.append(1))
    open(log + ".ready", "w").close()
    while not terms:
        time.sleep(0.01)
    time.sleep(0.3)  # room for a second SIGTERM, which would stop a real run without a checkpoint
    with open(os.path.join(checkpoint, "latest"), "w") as f:
        f.write(str(len(terms)))
    sys.exit(75)
sys.exit(int(mode))
"""


def start_job_script(tmp_path: Path, mode: str) -> tuple[subprocess.Popen[bytes], Path]:
    """job.yaml's container args, run by sh with a stand-in ``dask-datalog`` that records its
    arguments and exits with ``mode`` (or, for "sigterm", checkpoints on SIGTERM and exits 75)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "dask-datalog"
    fake.write_text(FAKE_CLI.format(python=sys.executable))
    fake.chmod(0o755)
    log = tmp_path / f"argv-{mode}.json"
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CHECKPOINT": str(tmp_path / "checkpoint"),
        "FAKE_LOG": str(log),
        "FAKE_MODE": mode,
    }
    (run,) = the("Job")["spec"]["template"]["spec"]["containers"]
    return subprocess.Popen(run["args"], env=environment), log


def test_job_script_checkpoints_resumes_and_cleans_up(tmp_path: Path) -> None:
    """A first pod checkpoints, a pod after an evicted one resumes, and only a finished run
    removes its checkpoints; the run's arguments pass through unchanged."""
    checkpoint = tmp_path / "checkpoint"
    (run,) = the("Job")["spec"]["template"]["spec"]["containers"]

    proc, log = start_job_script(tmp_path, "0")
    assert proc.wait(timeout=30) == 0
    argv = json.loads(log.read_text())
    assert argv == job_argv(run) + ["--checkpoint", str(checkpoint)]
    build_parser().parse_args(argv)
    assert not checkpoint.exists()

    checkpoint.mkdir()
    (checkpoint / "latest").write_text("run-1\n")
    proc, log = start_job_script(tmp_path, "1")
    assert proc.wait(timeout=30) == 1
    assert json.loads(log.read_text())[-2:] == ["--resume", str(checkpoint)]
    assert (checkpoint / "latest").exists()


def test_job_script_hands_sigterm_to_the_run_once(tmp_path: Path) -> None:
    """Kubernetes' SIGTERM (eviction, drain) reaches the run exactly once, and the pod exits
    with the run's 75 (checkpointed), which the Job's failure policy ignores."""
    proc, log = start_job_script(tmp_path, "sigterm")
    ready = log.with_name(log.name + ".ready")
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the stand-in run did not start"
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 75
    assert (tmp_path / "checkpoint" / "latest").read_text() == "1"
    rules = the("Job")["spec"]["podFailurePolicy"]["rules"]
    assert [75] in [r["onExitCodes"]["values"] for r in rules if r["action"] == "Ignore" and "onExitCodes" in r]
