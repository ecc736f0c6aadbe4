"""The deployment recipes in deploy/, validated statically.

Docker, Kubernetes and SLURM do not run on the development machine; these
tests check what can be checked without them: the files parse, name what the
tools require, and the job configs are valid scalepipe configs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from scalepipe.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
COMPOSE = DEPLOY / "compose"
KUBERNETES = DEPLOY / "kubernetes"
SLURM = DEPLOY / "slurm"


def _load_all(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@pytest.mark.parametrize("config", [COMPOSE / "job.yaml", KUBERNETES / "job.yaml", SLURM / "job.yaml"], ids=lambda p: p.parent.name)
def test_the_job_configs_are_valid(config):
    cfg = load_config(config)
    assert cfg.output is not None
    for path in (cfg.input.path, cfg.stats.path, cfg.output.path):
        assert Path(path).is_absolute(), f"{config}: {path} must be absolute, the same on every node"


# --------------------------------------------------------------------------
# docker compose
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())


def test_compose_has_a_scheduler_workers_and_a_job(compose):
    services = compose["services"]
    assert {"scheduler", "worker", "job"} <= set(services)
    scheduler, worker, job = services["scheduler"], services["worker"], services["job"]
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "8786" in scheduler["command"]
    assert "8786" in [str(p) for p in scheduler["expose"]]
    assert all(p.startswith("127.0.0.1:") for p in scheduler.get("ports", [])), "publish the dashboard on loopback only"
    assert "healthcheck" in scheduler
    assert worker["command"][:3] == ["dask", "worker", "tcp://scheduler:8786"]
    assert re.fullmatch(r"\$\{SCALEPIPE_WORKERS:-\d+\}|\d+", str(worker["deploy"]["replicas"]))
    assert job["command"] == ["scalepipe", "run", "/config/job.yaml", "--scheduler", "tcp://scheduler:8786"]
    for name in ("worker", "job"):
        assert services[name]["depends_on"]["scheduler"]["condition"] == "service_healthy"


def test_compose_shares_one_data_volume_and_one_image(compose):
    services = compose["services"]
    assert "data" in compose["volumes"]
    for name in ("worker", "job"):
        assert "data:/data" in services[name]["volumes"], name
    mounted = [v for v in services["job"]["volumes"] if v.endswith(":/config/job.yaml:ro")]
    assert mounted and (COMPOSE / mounted[0].split(":")[0]).resolve() == (COMPOSE / "job.yaml").resolve()
    for name, service in services.items():
        build = service["build"]
        assert (COMPOSE / build["context"] / build["dockerfile"]).resolve() == (COMPOSE / "Dockerfile").resolve(), name
        assert service["image"] == services["job"]["image"], "one image for the client and the workers"


def test_the_dockerfile_installs_the_package_and_its_entry_point():
    text = (COMPOSE / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert lines[0].startswith("FROM python:3.")
    assert "COPY pyproject.toml README.md ./" in lines and "COPY scalepipe ./scalepipe" in lines
    install = next(line for line in lines if "pip install" in line)
    assert re.search(r'pip install "\.\$\{EXTRAS\}"', install)
    assert re.search(r'^ARG EXTRAS="\[dashboard\]"$', text, re.M)  # bokeh, or the published dashboard is a "needs bokeh" page
    assert "scalepipe --version" in text  # the build fails if the entry point is missing
    assert re.search(r"^EXPOSE .*\b8786\b", text, re.M) and re.search(r"^USER scalepipe$", text, re.M)
    ignore = (COMPOSE / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") + 1 :][:3] == ["!pyproject.toml", "!README.md", "!scalepipe/"]
    root = DEPLOY.parent
    assert (root / "pyproject.toml").is_file() and (root / "README.md").is_file() and (root / "scalepipe").is_dir()
    assert 'scalepipe = "scalepipe.cli:entry"' in (root / "pyproject.toml").read_text()


# --------------------------------------------------------------------------
# Kubernetes (the Dask operator's DaskJob)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> dict[str, dict[str, Any]]:
    docs = _load_all(KUBERNETES / "scalepipe-daskjob.yaml")
    return {doc["kind"]: doc for doc in docs}


def _containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_spec["containers"]  # a PodSpec requires containers
    assert containers and all("name" in c and "image" in c for c in containers)
    return containers


def test_the_daskjob_has_the_operators_required_fields(manifests):
    job = manifests["DaskJob"]
    assert job["apiVersion"] == "kubernetes.dask.org/v1"
    assert job["metadata"]["name"]
    spec = job["spec"]
    assert {"job", "cluster"} <= set(spec)  # required by the DaskJob CRD
    runner = _containers(spec["job"]["spec"])[0]
    assert runner["args"][:3] == ["scalepipe", "run", "/config/job.yaml"]
    assert runner["args"][3:] == ["--scheduler", "$(DASK_SCHEDULER_ADDRESS)"]  # set in the pod by the operator
    cluster = spec["cluster"]["spec"]
    assert {"scheduler", "worker"} <= set(cluster)
    scheduler = cluster["scheduler"]
    assert {"spec", "service"} <= set(scheduler)
    sched = _containers(scheduler["spec"])[0]
    assert {p["containerPort"] for p in sched["ports"]} >= {8786, 8787}
    service = scheduler["service"]
    assert service["type"] == "ClusterIP"
    assert service["selector"] == {"dask.org/cluster-name": job["metadata"]["name"], "dask.org/component": "scheduler"}
    assert 8786 in [p["port"] for p in service["ports"]]
    worker = cluster["worker"]
    assert worker["replicas"] >= 1
    assert _containers(worker["spec"])[0]["args"][:2] == ["dask", "worker"]


def test_the_daskjob_mounts_the_shared_claim_and_the_config(manifests):
    job, claim, config_map = manifests["DaskJob"], manifests["PersistentVolumeClaim"], manifests["ConfigMap"]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    pods = {"job": job["spec"]["job"]["spec"], "worker": job["spec"]["cluster"]["spec"]["worker"]["spec"]}
    for name, pod in pods.items():
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
        mounts = {m["mountPath"]: m["name"] for m in _containers(pod)[0]["volumeMounts"]}
        assert claims.get(mounts.get("/data")) == claim["metadata"]["name"], name
    job_pod = pods["job"]
    assert job_pod["restartPolicy"] == "Never"
    config_volume = next(v for v in job_pod["volumes"] if "configMap" in v)
    assert config_volume["configMap"]["name"] == config_map["metadata"]["name"]
    images = {c["image"] for pod in (*pods.values(), job["spec"]["cluster"]["spec"]["scheduler"]["spec"]) for c in pod["containers"]}
    assert len(images) == 1, "one image for the client, the scheduler and the workers"


def test_the_configmaps_job_is_the_validated_job_yaml(manifests, tmp_path):
    embedded = manifests["ConfigMap"]["data"]["job.yaml"]
    (tmp_path / "job.yaml").write_text(embedded)
    assert load_config(tmp_path / "job.yaml") == load_config(KUBERNETES / "job.yaml")


# --------------------------------------------------------------------------
# SLURM (dask-jobqueue)
# --------------------------------------------------------------------------


def test_the_slurm_options_make_a_job_script(tmp_path, monkeypatch):
    pytest.importorskip("dask_jobqueue")
    from dask_jobqueue import SLURMCluster

    from scalepipe.cluster import _slurm_options

    cfg = load_config(SLURM / "job.yaml")
    assert cfg.cluster.kind == "slurm" and cfg.cluster.jobqueue
    options = _slurm_options(cfg.cluster)
    assert options["scheduler_options"]["dashboard_address"].startswith("127.0.0.1:")
    options.pop("interface")  # the development machine has no InfiniBand interface
    options["scheduler_options"]["dashboard_address"] = "127.0.0.1:0"  # 8787 may be taken here
    monkeypatch.chdir(tmp_path)  # log_directory is created here
    with SLURMCluster(**options) as cluster:
        script = cluster.job_script()
    jobqueue = cfg.cluster.jobqueue
    assert f"#SBATCH -p {jobqueue['queue']}" in script and f"#SBATCH -A {jobqueue['account']}" in script
    assert f"#SBATCH -t {jobqueue['walltime']}" in script and "#SBATCH --exclusive" in script
    assert jobqueue["job_script_prologue"][0] in script and "--nworkers 2" in script


def test_a_misspelt_jobqueue_option_fails_validate(tmp_path):
    """`walltme` passed validate and failed the run when the cluster started (after the queue wait)."""
    pytest.importorskip("dask_jobqueue")
    from scalepipe.errors import ConfigError
    from scalepipe.pipeline import validate_job

    cfg = load_config(SLURM / "job.yaml", ["cluster.jobqueue.walltme=00:10:00", f"stats.path={tmp_path / 's.json'}"])
    with pytest.raises(ConfigError, match=r"^cluster\.jobqueue: 'walltme' is not an option of dask_jobqueue\.SLURMCluster \(did you mean 'walltime'\?\) \(from --set"):
        validate_job(cfg)


def test_the_sbatch_launcher_runs_the_config():
    text = (SLURM / "run.sbatch").read_text()
    assert text.startswith("#!/bin/bash\n")
    directives = re.findall(r"^#SBATCH (\S+)", text, re.M)
    assert any(d.startswith("--time=") for d in directives) and "--signal=B:INT@60" in directives
    assert re.search(r'^exec scalepipe run "\$config"$', text, re.M)
    assert (SLURM / "run.sbatch").stat().st_mode & 0o111, "run.sbatch is executable"


def test_the_readme_documents_each_recipe_and_what_was_not_run():
    text = (DEPLOY / "README.md").read_text()
    for heading in ("## Docker compose", "## Kubernetes", "### The Dask Helm chart", "## SLURM"):
        assert heading in text
    assert "are not available on the machine scalepipe is developed on" in " ".join(text.split())
