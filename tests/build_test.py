"""BUILD stays in step with the code: every test file and tool has its Bazel target."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _targets():
    """(rule, name, srcs) of every rule call in BUILD, read as Python syntax."""
    tree = ast.parse((ROOT / "BUILD").read_text())
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            kwargs = {k.arg: k.value for k in node.keywords}
            name = ast.literal_eval(kwargs["name"]) if "name" in kwargs else None
            srcs = []
            if "srcs" in kwargs:
                try:
                    srcs = ast.literal_eval(kwargs["srcs"])
                except ValueError:  # glob(...)
                    srcs = []
            targets.append((node.func.id, name, srcs))
    return targets


def _sources(rule):
    return {src for r, _, srcs in _targets() if r == rule for src in srcs}


def _benchmark_modules():
    return sorted((ROOT / "benchmarks").rglob("*.py"))


def _tools():
    files = (sorted((ROOT / "tools").glob("*.py")) + sorted((ROOT / "export").glob("*.py"))
             + _benchmark_modules())
    return [p for p in files if p.name != "__init__.py" and "def main" in p.read_text()]


@pytest.mark.parametrize("path", sorted((ROOT / "tests").glob("*_test.py")),
                         ids=lambda p: p.name)
def test_every_test_file_has_a_py_test(path):
    assert str(path.relative_to(ROOT)) in _sources("py_test")


@pytest.mark.parametrize("path", _tools(), ids=lambda p: p.name)
def test_every_tool_has_a_py_binary(path):
    assert str(path.relative_to(ROOT)) in _sources("py_binary")


def _library_modules():
    """Every module of the library, its subpackages' (aanets_tf/hosts/...) included."""
    return {str(p.relative_to(ROOT)) for p in (ROOT / "aanets_tf").rglob("*.py")}


def test_every_library_module_is_in_the_library():
    missing = _library_modules() - _sources("py_library")
    assert not missing, f"not in a py_library's srcs: {sorted(missing)}"


def test_every_benchmark_module_is_in_a_target():
    named = {src for _, _, srcs in _targets() for src in srcs}
    missing = {str(p.relative_to(ROOT)) for p in _benchmark_modules()} - named
    assert not missing, f"in no target's srcs: {sorted(missing)}"


def test_library_modules_reach_subpackages():
    nested = [m for m in _library_modules() if m.count("/") > 1]
    assert "aanets_tf/hosts/__init__.py" in nested


def test_sources_named_in_build_exist():
    for rule, name, srcs in _targets():
        for src in srcs:
            assert (ROOT / src).exists(), f"{rule} {name}: {src} does not exist"


def test_target_names_are_unique():
    names = [name for _, name, _ in _targets() if name]
    assert len(names) == len(set(names))
