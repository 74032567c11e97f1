"""Tests for aanets_tf.cpu: the CPU model and features read from /proc/cpuinfo, and the
CPU allocator and kernels the library asks TensorFlow for."""

import os
import pathlib
import platform
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


def test_onednn_is_asked_for_on_x86_unless_the_environment_chose():
    environ = {}
    assert cpu.prefer_onednn(environ, machine="x86_64") == "1"
    assert environ == {cpu.ONEDNN_VARIABLE: "1"}
    chosen = {cpu.ONEDNN_VARIABLE: "0"}
    assert cpu.prefer_onednn(chosen, machine="AMD64") == "0"
    assert chosen == {cpu.ONEDNN_VARIABLE: "0"}
    # Off x86 (oneDNN there means other kernels) the environment is left as it is.
    elsewhere = {}
    assert cpu.prefer_onednn(elsewhere, machine="aarch64") is None
    assert elsewhere == {}


def _fresh_python(code: str, **variables: str | None) -> str:
    """Run `code` in a fresh interpreter with each of `variables` unset (None) or set;
    its last word of output."""
    env = {k: v for k, v in os.environ.items() if k not in variables}
    env.update({k: v for k, v in variables.items() if v is not None})
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    process = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                             text=True, timeout=300, cwd=pathlib.Path(__file__).parents[1])
    assert process.returncode == 0, process.stderr[-2000:]
    return process.stdout.split()[-1]


@pytest.mark.slow  # fresh processes
@pytest.mark.skipif(platform.machine().lower() not in cpu.X86_MACHINES, reason="x86 only")
@pytest.mark.parametrize("environment, onednn", [(None, "True"), ("0", "False")])
def test_importing_the_library_turns_on_onednn_kernels(environment, onednn):
    # What TensorFlow decided when it was imported after the library.
    code = ("import aanets_tf, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled())\n")
    assert _fresh_python(code, **{cpu.ONEDNN_VARIABLE: environment}) == onednn


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
    # With oneDNN's kernels TensorFlow allocates through oneDNN's own allocator (BFC for
    # large blocks, statistics included) whatever the variable says: Eigen's kernels here.
    word = _fresh_python(code, **{cpu.BFC_ALLOCATOR_VARIABLE: environment,
                                  cpu.ONEDNN_VARIABLE: "0"})
    assert word == ("True" if bfc else "statistics")


@pytest.mark.slow  # a fresh process
def test_this_process_runs_the_kernels_the_tools_run():
    # Runs compared bit for bit (resume, --phase0_from) are made here and in tools started
    # from here: both must run the same kernels (conftest imports the library first).
    from tensorflow.python.util import _pywrap_util_port

    code = ("import aanets_tf, tensorflow\n"
            "from tensorflow.python.util import _pywrap_util_port\n"
            "print(_pywrap_util_port.IsMklEnabled())\n")
    fresh = _fresh_python(code, **{cpu.ONEDNN_VARIABLE: os.environ.get(cpu.ONEDNN_VARIABLE)})
    assert fresh == str(bool(_pywrap_util_port.IsMklEnabled()))
