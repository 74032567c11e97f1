"""Tests for aanets_tf.cpu: the CPU model and features read from /proc/cpuinfo."""

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
