"""cluster.yaml passes the cluster launcher's own schema and keeps what the README promises."""

import copy
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cluster():
    return yaml.safe_load((ROOT / "cluster.yaml").read_text())


def _validate(cfg):
    # the launcher's own checks (private API; what `ray up` runs before touching the cloud)
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(copy.deepcopy(cfg)))


def test_schema_accepts_the_file(cluster):
    _validate(cluster)


def test_schema_rejects_a_misspelled_key(cluster):
    import jsonschema

    bad = copy.deepcopy(cluster)
    bad["available_node_types"]["gpu_worker"]["max_worker"] = 4
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        _validate(bad)


def test_cpu_head_and_gpu_worker_type(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("CPU") == 0  # nothing trains on the head
    gpu = types["gpu_worker"]
    assert gpu["min_workers"] == 0 and gpu["max_workers"] >= 1
    assert re.match(r"(g5|g6|p3|p4d|p5)\.", gpu["node_config"]["InstanceType"])
    assert cluster["max_workers"] >= gpu["max_workers"]


def test_setup_installs_the_project_from_the_mounted_tree(cluster):
    mount = next(remote for remote, local in cluster["file_mounts"].items() if local == ".")
    assert any("pip install" in c and mount in c for c in cluster["setup_commands"])


def test_dashboard_stays_off_public_interfaces(cluster):
    head_start = " ".join(cluster["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in (ROOT / "cluster.yaml").read_text()


def test_no_credentials_in_the_file():
    text = (ROOT / "cluster.yaml").read_text()
    for pattern in (r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"ssh_private_key", r"password",
                    r"token\s*:"):
        assert not re.search(pattern, text, re.IGNORECASE), pattern
