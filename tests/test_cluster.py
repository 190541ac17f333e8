"""cluster/: the launcher configs pass Ray's own config checks and the cloud APIs' request schemas;
the KubeRay manifests pass the CRDs' fields and Kubernetes' strict schemas; and what the configs
offer (GPUs of an accelerator type, at min 0, on spot) is what jobs/ asks for. A wrong key fails."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kun_ray.config import ConfigError
from kun_ray.plan import parse_config

REPO = Path(__file__).resolve().parent.parent
CLUSTER = REPO / "cluster"
LAUNCHER_CONFIGS = ["aws.yaml", "gcp.yaml"]
KUBERAY = ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
KUBERNETES_VERSION = "1.33"


def _load(name: str) -> Any:
    return yaml.safe_load((CLUSTER / name).read_text())


def _launcher_check(config: dict) -> None:
    """What `ray up` does to a config before it talks to the cloud: fill the provider's defaults, then validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(config)))


# --- Cloud request schemas: a node_config is the body of the cloud's create-instance call ----------------


def _check_botocore(value: Any, shape: Any, where: str) -> list[str]:
    """Keys and types of `value` against a botocore shape (the EC2 API's own request model)."""
    if shape.type_name == "structure":
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        problems = [f"{where}.{key}: not a field of {shape.name}" for key in value if key not in shape.members]
        return problems + [
            p
            for key, item in value.items()
            if key in shape.members
            for p in _check_botocore(item, shape.members[key], f"{where}.{key}")
        ]
    if shape.type_name == "list":
        return (
            [p for i, item in enumerate(value) for p in _check_botocore(item, shape.member, f"{where}[{i}]")]
            if isinstance(value, list)
            else [f"{where}: expected a list"]
        )
    if shape.type_name in ("integer", "long"):
        return [] if isinstance(value, int) and not isinstance(value, bool) else [f"{where}: expected an integer"]
    if shape.type_name == "boolean":
        return [] if isinstance(value, bool) else [f"{where}: expected true or false"]
    if shape.type_name == "string":
        enum = shape.enum or []
        if not isinstance(value, str):
            return [f"{where}: expected a string"]
        return [f"{where}: {value!r} is not one of {enum}"] if enum and value not in enum else []
    return []


def ec2_problems(node_config: dict) -> list[str]:
    import botocore.session

    shape = botocore.session.get_session().get_service_model("ec2").operation_model("RunInstances").input_shape
    return _check_botocore(node_config, shape, "node_config")


def _compute_schemas() -> dict:
    import googleapiclient

    path = Path(googleapiclient.__file__).parent / "discovery_cache" / "documents" / "compute.v1.json"
    return json.loads(path.read_text())["schemas"]


def _check_discovery(value: Any, schema: dict, schemas: dict, where: str) -> list[str]:
    """Keys and types of `value` against a Google API discovery schema (Compute Engine's Instance)."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"]]
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        if not isinstance(value, dict):
            return [f"{where}: expected a mapping"]
        props = schema["properties"]
        problems = [
            f"{where}.{key}: not a field of {schema.get('id', 'this object')}" for key in value if key not in props
        ]
        return problems + [
            p
            for key, item in value.items()
            if key in props
            for p in _check_discovery(item, props[key], schemas, f"{where}.{key}")
        ]
    if kind == "array":
        return (
            [
                p
                for i, item in enumerate(value)
                for p in _check_discovery(item, schema["items"], schemas, f"{where}[{i}]")
            ]
            if isinstance(value, list)
            else [f"{where}: expected a list"]
        )
    if kind == "string" and "enum" in schema and value not in schema["enum"]:
        return [f"{where}: {value!r} is not one of {schema['enum']}"]
    if kind == "boolean" and not isinstance(value, bool):
        return [f"{where}: expected true or false"]
    return []


def gce_problems(node_config: dict) -> list[str]:
    schemas = _compute_schemas()
    return _check_discovery(node_config, {"$ref": "Instance"}, schemas, "node_config")


CLOUD_CHECKS = {"aws": ec2_problems, "gcp": gce_problems}


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_passes_rays_checks_and_the_clouds_schema(name):
    config = _load(name)
    _launcher_check(config)
    check = CLOUD_CHECKS[config["provider"]["type"]]
    for node_type, spec in config["available_node_types"].items():
        assert check(spec["node_config"]) == [], node_type


@pytest.mark.parametrize("name", LAUNCHER_CONFIGS)
def test_launcher_config_is_shaped_for_autoscaling(name):
    config = _load(name)
    head = config["head_node_type"]
    types = config["available_node_types"]
    assert types[head]["resources"].get("CPU") == 0  # the head runs the driver, not the work
    workers = {k: v for k, v in types.items() if k != head}
    assert workers and all(v["min_workers"] == 0 for v in workers.values())  # nothing runs idle
    spot = {
        k
        for k, v in workers.items()
        if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
        or v["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"
    }
    assert {k for k in workers if k.startswith("cpu")} <= spot and any(k.startswith("gpu") for k in spot)
    assert any("pip install" in command and "kun-ray" in command for command in config["setup_commands"])


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("aws.yaml", lambda c: c["available_node_types"]["gpu-l4-spot"].update(min_worker=0), "min_worker"),
        ("gcp.yaml", lambda c: c.update(idle_timeout_minute=5), "idle_timeout_minute"),
        ("aws.yaml", lambda c: c["available_node_types"]["cpu-spot"]["resources"].update(CPU=0.5), "0.5"),
    ],
)
def test_a_wrong_launcher_key_fails_rays_checks(name, edit, message):
    import jsonschema

    config = _load(name)
    edit(config)
    with pytest.raises(jsonschema.ValidationError, match=message):
        _launcher_check(config)


def test_a_wrong_node_config_key_fails_the_cloud_schema():
    aws = _load("aws.yaml")["available_node_types"]["gpu-l4-spot"]["node_config"]
    assert ec2_problems({**aws, "InstanceTyp": "g6.4xlarge"}) == [
        "node_config.InstanceTyp: not a field of RunInstancesRequest"
    ]
    assert ec2_problems({**aws, "InstanceMarketOptions": {"MarketType": "spto"}})[0].startswith(
        "node_config.InstanceMarketOptions.MarketType: 'spto' is not one of"
    )
    gcp = _load("gcp.yaml")["available_node_types"]["gpu-l4-spot"]["node_config"]
    assert gce_problems({**gcp, "scheduling": {"provisioningModel": "SPOT", "preemptable": True}}) == [
        "node_config.scheduling.preemptable: not a field of Scheduling"
    ]
    assert gce_problems({**gcp, "machinetype": "g2-standard-12"}) == [
        "node_config.machinetype: not a field of Instance"
    ]


# --- KubeRay ----------------------------------------------------------------------------------------------


def _kuberay_validator(kind: str):
    """A validator of one ray.io/v1 kind: tests/schemas/kuberay-v1.json, whose Kubernetes types refer to
    Kubernetes' strict schemas (kubernetes-validate), as `kubectl apply --validate=strict` checks them."""
    import jsonschema
    import kubernetes_validate
    from referencing import Registry, Resource

    base = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    definitions = json.loads((base / f"v{KUBERNETES_VERSION}.0-local-strict" / "_definitions.json").read_text())
    ours = json.loads((REPO / "tests" / "schemas" / "kuberay-v1.json").read_text())
    registry = Registry().with_resources(
        [(definitions["$id"], Resource.from_contents(definitions)), (ours["$id"], Resource.from_contents(ours))]
    )
    return jsonschema.Draft202012Validator({"$ref": f"{ours['$id']}#/$defs/{kind}"}, registry=registry)


def kubernetes_problems(document: dict) -> list[str]:
    if document["apiVersion"] == "ray.io/v1":
        errors = _kuberay_validator(document["kind"]).iter_errors(document)
        return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors]
    import kubernetes_validate

    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        return [f"{'.'.join(map(str, error.path))}: {error.message}"]
    return []


def _documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((CLUSTER / name).read_text()) if d]


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_manifests_pass_the_crd_and_kubernetes_schemas(name):
    documents = _documents(name)
    assert {d["kind"] for d in documents} & {"RayCluster", "RayJob"}
    for document in documents:
        assert kubernetes_problems(document) == [], document["kind"]


def _cluster_spec(document: dict) -> dict:
    return document["spec"]["rayClusterSpec"] if document["kind"] == "RayJob" else document["spec"]


@pytest.mark.parametrize("name", KUBERAY)
def test_kuberay_clusters_autoscale_from_zero(name):
    for document in _documents(name):
        if document["kind"] not in ("RayCluster", "RayJob"):
            continue
        spec = _cluster_spec(document)
        assert spec["enableInTreeAutoscaling"] is True
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        groups = spec["workerGroupSpecs"]
        assert all(g["minReplicas"] == 0 for g in groups)
        gpu = [g for g in groups if "nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]]
        assert gpu and all("accelerator_type:" in g["rayStartParams"]["resources"] for g in gpu)


@pytest.mark.parametrize(
    ("edit", "where"),
    [
        (lambda s: s["workerGroupSpecs"][0].update(maxReplica=4), "workerGroupSpecs.0"),
        (
            lambda s: s["workerGroupSpecs"][1]["template"]["spec"]["containers"][0].update(resource={}),
            "workerGroupSpecs.1.template.spec.containers.0",
        ),
        (lambda s: s["autoscalerOptions"].update(upscalingMode="Fast"), "autoscalerOptions.upscalingMode"),
        (lambda s: s["headGroupSpec"].pop("template"), "headGroupSpec"),
    ],
)
def test_a_wrong_kuberay_key_fails(edit, where):
    document = _documents("kuberay/raycluster.yaml")[0]
    edit(document["spec"])
    problems = kubernetes_problems(document)
    assert problems and problems[0].startswith(f"spec.{where}"), problems


def test_the_rayjobs_config_is_a_kun_ray_config(tmp_path):
    config_map = next(d for d in _documents("kuberay/rayjob.yaml") if d["kind"] == "ConfigMap")
    job = next(d for d in _documents("kuberay/rayjob.yaml") if d["kind"] == "RayJob")
    mount = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["volumeMounts"][0][
        "mountPath"
    ]
    name = next(iter(config_map["data"]))
    assert f"{mount}/{name}" in job["spec"]["entrypoint"]
    config = parse_config(yaml.safe_load(config_map["data"][name]), tmp_path)
    assert config.llm_stages() == ["label", "score", "polish"]
    with pytest.raises(ConfigError):  # and the schema behind it still refuses typos
        parse_config({**yaml.safe_load(config_map["data"][name]), "lable": {}}, tmp_path)


# --- What jobs/ asks for, the clusters offer ----------------------------------------------------------------


def _offered_accelerators() -> dict[str, set[str]]:
    """Per cluster config, the accelerator types its worker groups bring up."""
    offered: dict[str, set[str]] = {}
    for name in LAUNCHER_CONFIGS:
        for spec in _load(name)["available_node_types"].values():
            offered.setdefault(name, set()).update(
                r.split(":", 1)[1] for r in spec["resources"] if r.startswith("accelerator_type:")
            )
    for name in KUBERAY:
        for document in _documents(name):
            if document["kind"] in ("RayCluster", "RayJob"):
                for group in _cluster_spec(document)["workerGroupSpecs"]:
                    # rayStartParams.resources is KubeRay's quoted JSON: '"{\"accelerator_type:L4\": 1}"'
                    resources = json.loads(json.loads(group["rayStartParams"].get("resources", '"{}"')))
                    offered.setdefault(name, set()).update(
                        r.split(":", 1)[1] for r in resources if r.startswith("accelerator_type:")
                    )
    return offered


def test_every_gpu_stage_of_the_ready_configs_can_be_placed_on_every_cluster():
    asked = set()
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        for stage in ("label", "score", "polish"):
            section = data.get(stage) or {}
            if section.get("device", "gpu") == "gpu" and section.get("enabled", True) and section:
                asked.add(section.get("accelerator_type"))
        if (scaling := data.get("scaling")) and scaling.get("use_gpu", True):  # a training config's workers
            asked.add(scaling.get("accelerator_type"))
    asked.discard(None)  # any GPU will do
    assert asked, "jobs/ names no accelerator type: this test checks nothing"
    for name, offered in _offered_accelerators().items():
        assert asked <= offered, f"{name} offers {sorted(offered)}, jobs/ asks for {sorted(asked)}"
