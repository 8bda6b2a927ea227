"""Process facts and initialize_distributed (single process; multi-process tests live with the
multi-host launcher)."""

from __future__ import annotations

import pytest

import titanax.mesh as tm
from titanax.testing import free_port, run_with_devices


def test_process_facts_on_one_process() -> None:
    info = tm.process_info()
    assert (info.process_index, info.process_count) == (0, 1)
    assert info.local_device_count == info.global_device_count == 8
    assert info.platform == "cpu"
    assert info.host == tm.host_id()
    assert tm.process_index() == 0
    assert tm.process_count() == 1
    assert tm.local_device_count() == tm.global_device_count() == 8


def test_refuses_after_backend_started() -> None:
    # The test process already ran computations, so this must not silently run single-process.
    with pytest.raises(tm.DistributedError, match=r"JAX backend is already initialized"):
        tm.initialize_distributed(
            coordinator_address=f"127.0.0.1:{free_port()}", num_processes=2, process_id=0
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_processes": 2}, r"pass all of coordinator_address, num_processes and process_id"),
        (
            {"coordinator_address": "127.0.0.1:1", "num_processes": 2, "process_id": 2},
            r"process_id=2 is outside \[0, 2\)",
        ),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(tm.DistributedError, match=match):
        tm.initialize_distributed(**kwargs)  # type: ignore[arg-type]


def test_single_process_start_up_and_device_check() -> None:
    port = free_port()
    result = run_with_devices(
        f"""
        import titanax.mesh as tm
        info = tm.initialize_distributed(
            coordinator_address="127.0.0.1:{port}", num_processes=1, process_id=0,
            coordinator_bind_address="127.0.0.1:{port}", initialization_timeout=30,
            expected_global_devices=2)
        print("OK", info.process_count, info.global_device_count)
        """,
        num_devices=2,
        timeout=120,
    )
    assert "OK 1 2" in result.stdout


def test_device_count_mismatch_is_diagnosed() -> None:
    port = free_port()
    result = run_with_devices(
        f"""
        import titanax.mesh as tm
        try:
            tm.initialize_distributed(
                coordinator_address="127.0.0.1:{port}", num_processes=1, process_id=0,
                coordinator_bind_address="127.0.0.1:{port}", initialization_timeout=30,
                expected_global_devices=8)
        except tm.DistributedError as err:
            print("ERR", err)
        """,
        num_devices=2,
        timeout=120,
    )
    assert "see 2 cpu devices in all (2 on this process), but 8 were expected" in result.stdout


def test_environment_variables_and_mesh_diagnosis() -> None:
    port = free_port()
    result = run_with_devices(
        """
        import titanax.mesh as tm
        try:
            tm.initialize_distributed(
                mesh=tm.MeshSpec(axes=("data", "tensor"), shape=(-1, 4)), platform="cpu")
        except tm.DistributedError as err:
            print("ERR", err)
        """,
        num_devices=2,
        timeout=120,
        env={
            "TITANAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "TITANAX_COORDINATOR_BIND_ADDRESS": f"127.0.0.1:{port}",
            "TITANAX_NUM_PROCESSES": "1",
            "TITANAX_PROCESS_ID": "0",
            "TITANAX_INIT_TIMEOUT": "30",
        },
    )
    assert "1 process(es) × 2 local device(s) = 2 devices do not fit the mesh" in result.stdout
    assert "2 is not divisible by tensor=4" in result.stdout


def test_platform_mismatch_is_diagnosed() -> None:
    port = free_port()
    result = run_with_devices(
        f"""
        import titanax.mesh as tm
        try:
            tm.initialize_distributed(
                coordinator_address="127.0.0.1:{port}", num_processes=1, process_id=0,
                coordinator_bind_address="127.0.0.1:{port}", initialization_timeout=30,
                platform="gpu")
        except tm.DistributedError as err:
            print("ERR", err)
        """,
        num_devices=1,
        timeout=120,
    )
    assert "platform is 'cpu', the config expects 'gpu': JAX found no accelerator" in result.stdout


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"TITANAX_NUM_PROCESSES": "two"}, r"TITANAX_NUM_PROCESSES='two' is not an integer"),
        (
            {"TITANAX_NUM_PROCESSES": "2", "TITANAX_PROCESS_ID": "0"},
            r"pass all of coordinator_address, num_processes and process_id \(or the "
            r"TITANAX_COORDINATOR_ADDRESS",
        ),
    ],
)
def test_bad_environment(env: dict[str, str], match: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(tm.DistributedError, match=match):
        tm.initialize_distributed()
