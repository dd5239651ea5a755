"""Sharding the engine over a local two-worker Ray instance gives the single-process traces, bit for bit."""

import numpy as np
import pytest

from st2chip.chip.lower import lower
from st2chip.converters.mlp import mlp_to_nir
from st2chip.targets import engine, ray_shards


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_shards_cover_every_sample_once():
    assert ray_shards._shard_bounds(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert ray_shards._shard_bounds(2, 5) == [(0, 1), (1, 2)]


def test_two_workers_equal_one_process(local_ray, random_mlp, digit_spikes):
    chip = lower(mlp_to_nir(random_mlp()), decay_groups=2)
    x = {"input": digit_spikes(9)}
    single = engine.run(chip, x)
    sharded = ray_shards.run(chip, x, shards=2)
    assert sharded.samples == 9
    for layer in single.spikes:
        np.testing.assert_array_equal(sharded.spikes[layer], single.spikes[layer])
        np.testing.assert_array_equal(sharded.voltages[layer], single.voltages[layer])
    np.testing.assert_array_equal(sharded.scores, single.scores)
    assert local_ray.cluster_resources()["CPU"] == 2


def test_cli_verify_with_ray(local_ray, random_mlp, tmp_path, capsys):
    from st2chip.cli.main import main
    from st2chip.graph.nirfile import write_nir

    path = write_nir(mlp_to_nir(random_mlp()), tmp_path / "m.nir")
    code = main(["verify", str(path), "--samples", "12", "--backends", "float,reference", "--ray"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "12 samples" in out and "float vs reference" in out
