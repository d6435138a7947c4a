"""Mesh construction from config: -1 resolution, validation messages, layout."""

import jax
import pytest

from rl_lm import parallel


@pytest.mark.parametrize(
    "axes, expected",
    [
        ({"data": -1, "fsdp": 1, "tensor": 1}, (8, 1, 1)),
        ({"data": 2, "fsdp": -1, "tensor": 2}, (2, 2, 2)),
        ({"data": 1, "fsdp": 4, "tensor": -1}, (1, 4, 2)),
        ({"data": 2, "fsdp": 4, "tensor": 1}, (2, 4, 1)),
    ],
)
def test_mesh_shape_resolves_minus_one(axes, expected):
    assert parallel.mesh_shape(axes, 8) == expected


@pytest.mark.parametrize(
    "axes, message",
    [
        ({"data": -1, "fsdp": -1, "tensor": 1}, "at most one mesh axis may be -1"),
        ({"data": 2, "fsdp": 2, "tensor": 1}, "covers 4 devices but 8 are available"),
        ({"data": 3, "fsdp": -1, "tensor": 1}, "do not divide the 8 available"),
        ({"data": 0, "fsdp": -1, "tensor": 1}, "data=0"),
        ({"data": -1, "fsdp": 1, "model": 1}, "unknown ['model'], missing ['tensor']"),
    ],
)
def test_mesh_shape_errors_name_the_problem(axes, message):
    with pytest.raises(ValueError) as e:
        parallel.mesh_shape(axes, 8)
    assert message in str(e.value)


def test_make_mesh_layout_and_description():
    mesh = parallel.make_mesh({"data": 2, "fsdp": -1, "tensor": 2})
    assert mesh.axis_names == parallel.AXES
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    # jax.devices() order: process-major, so a process's batch rows are contiguous.
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]
    assert parallel.describe(mesh) == "data=2 x fsdp=2 x tensor=2 (8 devices, cpu)"


def test_make_mesh_on_a_device_subset():
    mesh = parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    assert mesh.devices.size == 1


def test_initialize_is_a_noop_for_a_single_process(monkeypatch):
    for name in parallel.distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert parallel.initialize() is False


def test_initialize_needs_all_three_settings(monkeypatch):
    for name in parallel.distributed.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
    with pytest.raises(ValueError, match="'coordinator_address', 'process_id'"):
        parallel.initialize()
