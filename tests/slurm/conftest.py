"""A real single-node Slurm cluster for the module's tests (`scaling.slurm_local`).

Where the cluster can be set up (root: CI runs `make test` as root) a failure to start it
fails the tests with its one-line reason; a skip there would hide a broken launcher. Only as
another user, outside CI, are they skipped, with the reason.
"""

import os

import pytest

from scaling import slurm_local


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local cluster started for the module and stopped after it (its jobs cancelled)."""
    if os.geteuid() != 0 and not os.environ.get("CI"):
        pytest.skip("a local Slurm cluster needs root (slurmd, slurmctld, munged); "
                    "CI runs these tests as root")
    root = tmp_path_factory.mktemp("slurm")
    try:
        cluster = slurm_local.start(root)
    except slurm_local.ClusterError as error:
        pytest.fail(f"the local Slurm cluster did not start: {error}", pytrace=False)
    yield cluster
    slurm_local.stop(root)
