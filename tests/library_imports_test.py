"""The library never reads flags: no absl.flags, argparse or sys.argv in aanets_tf/."""

import ast
import pathlib

import pytest

LIBRARY = pathlib.Path(__file__).resolve().parents[1] / "aanets_tf"
FORBIDDEN_MODULES = ("argparse", "absl.flags", "absl.app")


def _library_files():
    return sorted(LIBRARY.rglob("*.py"))


def _violations(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith(FORBIDDEN_MODULES)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names]
            found += [n for n in [node.module, *names] if n.startswith(FORBIDDEN_MODULES)]
        elif (isinstance(node, ast.Attribute) and node.attr == "argv"
              and isinstance(node.value, ast.Name) and node.value.id == "sys"):
            found.append("sys.argv")
    return found


def test_library_has_modules():
    assert len(_library_files()) > 10


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: p.name)
def test_module_reads_no_flags(path):
    assert _violations(path.read_text()) == []


@pytest.mark.parametrize("source, expected", [
    ("import argparse", ["argparse"]),
    ("from absl import flags", ["absl.flags"]),
    ("import absl.flags as f", ["absl.flags"]),
    ("import sys\nx = sys.argv[1:]", ["sys.argv"]),
    ("from absl import logging\nimport os", []),
])
def test_checker_catches_flag_reading(source, expected):
    assert _violations(source) == expected
