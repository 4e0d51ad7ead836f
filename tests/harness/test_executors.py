import json
import os

import pytest

from harness.errors import HarnessError
from harness.run.executors import map_cells
from harness.run.grid import GridSpec
from harness.run.runner import GridRunner

SPEC = GridSpec(methods=("real", "noise"), bits=("w4a4",), models=("digits_vit_seed0",), limit=60)  # two cells


def _metrics(out):
    records = [json.loads(p.read_text()) for p in (out / "records").glob("*.json")]
    return {r["cell_id"]: r["metrics"] for r in records}, {r["pid"] for r in records}


@pytest.fixture(scope="module")
def local_metrics(tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    assert GridRunner(out).run(SPEC).computed == 2
    return _metrics(out)[0]


@pytest.mark.parametrize("executor", ["isolated", "submitit-local", "ray"])
def test_backends_reproduce_local_records(executor, tmp_path, local_metrics):
    if executor == "ray":
        ray = pytest.importorskip("ray")
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    else:
        pytest.importorskip("submitit") if executor == "submitit-local" else None
    try:
        summary = GridRunner(tmp_path).run(SPEC, executor=executor)
    finally:
        if executor == "ray":
            ray.shutdown()
    assert (summary.computed, summary.failed) == (2, 0)
    metrics, pids = _metrics(tmp_path)
    assert metrics == local_metrics
    assert os.getpid() not in pids  # the cells really ran in worker processes
    assert GridRunner(tmp_path).run(SPEC, executor=executor).skipped == 2


def test_unknown_executor(tmp_path):
    with pytest.raises(HarnessError, match="unknown executor 'mpi'; accepted: local, isolated, ray"):
        list(map_cells("mpi", GridRunner(tmp_path).worker, [object()], {}))
