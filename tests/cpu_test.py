"""Tests for aanets_tf.cpu: the CPU model and features read from /proc/cpuinfo, and the
CPU allocator the library asks TensorFlow for."""

import os
import pathlib
import subprocess
import sys

import pytest

from aanets_tf import cpu


def test_model_and_only_the_features_of_interest(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                    "flags\t\t: fpu sse2 avx2 fma avx512f amx_bf16 amx_tile avx512_bf16 ht\n\n"
                    "processor\t: 1\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n")
    info = cpu.cpu_info(str(path))
    assert info["model"] == "Intel(R) Xeon(R) Platinum 8480+"
    # In the order of FEATURES_OF_INTEREST; fpu, sse2 and ht are not of interest.
    assert info["flags"] == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]


def test_unreadable_cpuinfo_reports_no_features(tmp_path):
    info = cpu.cpu_info(str(tmp_path / "missing"))
    assert info["flags"] == [] and isinstance(info["model"], str)


def test_the_bfc_allocator_is_asked_for_unless_the_environment_chose():
    environ = {}
    assert cpu.prefer_bfc_allocator(environ) == "true"
    assert environ == {cpu.BFC_ALLOCATOR_VARIABLE: "true"}
    chosen = {cpu.BFC_ALLOCATOR_VARIABLE: "false"}
    assert cpu.prefer_bfc_allocator(chosen) == "false"
    assert chosen == {cpu.BFC_ALLOCATOR_VARIABLE: "false"}


@pytest.mark.slow  # fresh processes
@pytest.mark.parametrize("environment, bfc", [(None, True), ("false", False)])
def test_importing_the_library_gives_tensorflow_the_bfc_allocator(environment, bfc):
    # Only the BFC allocator keeps statistics: TensorFlow's malloc-based one has none.
    code = ("import aanets_tf, tensorflow as tf\n"
            "tf.zeros([256, 256])\n"
            "try:\n"
            "    print(tf.config.experimental.get_memory_info('CPU:0')['peak'] > 0)\n"
            "except ValueError:\n"
            "    print('no statistics')\n")
    env = {k: v for k, v in os.environ.items() if k != cpu.BFC_ALLOCATOR_VARIABLE}
    if environment is not None:
        env[cpu.BFC_ALLOCATOR_VARIABLE] = environment
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    process = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    assert process.returncode == 0, process.stderr[-2000:]
    assert process.stdout.split()[-1] == ("True" if bfc else "statistics")
