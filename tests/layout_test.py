"""The library's layout: each family imports only from the layers below its own, and the
frameworks' private parts are used only where the allow-list here says why.

Read from the source (`ast`), without importing the library or a framework.
"""

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "aanets_tf"

# The layers, lowest first. A module imports modules of its own family and of the
# families of lower layers only; the families of one layer are independent of each
# other. "foundation" is the top level (`config`, `atomic_io`, `cpu`, `workdir`,
# `distribute`) and the hosts' framework-free registry, which `config` reads.
LAYERS = (
    ("foundation",),
    ("data", "models", "reports"),
    ("hosts", "serving"),
    ("training",),
    ("protocol",),
    ("tuning",),
)
RANK = {family: rank for rank, families in enumerate(LAYERS) for family in families}
FOUNDATION_MODULES = ("aanets_tf.hosts.registry",)

# Every use of a framework's private parts in the shipped code (the library, tools/,
# export/): (file, what it uses) -> why no public API serves. docs/architecture.md
# lists the same.
ALLOWED_PRIVATE = {
    ("aanets_tf/cpu.py", "tensorflow.python.util._pywrap_util_port"):
        "whether TensorFlow runs its oneDNN kernels, recorded with every benchmark",
    ("aanets_tf/distribute.py", "_in_multi_worker_mode"):
        "a multi-worker strategy with several workers (Keras reduces step outputs there)",
    ("aanets_tf/distribute.py", "_flatten_layers"):
        "every BatchNormalization of a model, nested models included, to synchronise",
    ("aanets_tf/models/residual.py", "raw_ops"):
        "the fused BatchNorm kernel (FusedBatchNormV3), which Keras 3 does not call",
    ("aanets_tf/training/optimizers.py", "raw_ops"):
        "the fused momentum kernel (ResourceApplyKerasMomentum), which Keras' SGD does not call",
    ("aanets_tf/training/optimizers.py", "_get_variable_index"):
        "a variable's momentum slot, found as Keras' own SGD finds it",
    ("aanets_tf/protocol/phase.py", "predict_function"):
        "whether a model has predicted yet, so jit_compile is set before its first trace",
    ("aanets_tf/training/learner.py", "_maybe_symbolic_build"):
        "Keras fit's symbolic build, which fails under MultiWorkerMirroredStrategy "
        "(keras-team/keras#20585)",
    ("aanets_tf/tuning/tuning_chief.py", "keras_tuner.src.distribute.utils"):
        "whether this process is a distributed search's chief or a worker",
    ("aanets_tf/tuning/tuning_chief.py", "keras_tuner.src.distribute.oracle_chief"):
        "the chief's oracle server, run with a hook after each trial",
    ("aanets_tf/tuning/tuning_chief.py", "keras_tuner.src.engine.oracle"):
        "the oracle's lock, held while the hook runs",
    ("aanets_tf/tuning/tuning_chief.py", "keras_tuner.src.protos"):
        "the oracle service's gRPC registration",
}
# Attributes that are the frameworks' internals without a leading underscore.
FRAMEWORK_INTERNALS = frozenset({
    "raw_ops", "predict_function", "train_function", "test_function",
    "make_predict_function", "make_train_function", "make_test_function"})
FRAMEWORKS = ("tensorflow", "keras", "keras_tuner", "tf_keras")
SHIPPED = ("aanets_tf", "tools", "export")


def _relative(path: pathlib.Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _library_files():
    return sorted(LIBRARY.rglob("*.py"))


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def family(module: str) -> str:
    """The family of a library module: its subpackage, or "foundation"."""
    parts = module.split(".")
    if module in FOUNDATION_MODULES or len(parts) == 1:
        return "foundation"
    if len(parts) == 2 and not (LIBRARY / parts[1] / "__init__.py").is_file():
        return "foundation"  # a top-level module
    return parts[1]


def imported_modules(source: str, module: str, is_package: bool = False) -> list[tuple[int, str]]:
    """(line, library module) of every import in `source`, function-local ones included.

    `from package import name` counts as importing `package.name` where that is a
    module, else `package`.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names
                      if a.name.split(".")[0] == "aanets_tf"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")[:len(module.split(".")) - node.level
                                           + (1 if is_package else 0)]
                base = ".".join(package + ([base] if base else []))
            if base.split(".")[0] != "aanets_tf":
                continue
            for alias in node.names:
                name = f"{base}.{alias.name}"
                found.append((node.lineno, name if _is_module(name) else base))
    return found


def upward_imports(module: str, source: str, is_package: bool = False) -> list[str]:
    """Each import of `source` (library module `module`) that does not go down the layers."""
    own = family(module)
    problems = []
    for line, target in imported_modules(source, module, is_package):
        other = family(target)
        if other != own and RANK[other] >= RANK[own]:
            problems.append(f"line {line}: {own} imports {target} ({other})")
    return problems


# === Layers ===

def test_every_family_has_a_layer():
    families = {family(_module_name(p)) for p in _library_files()}
    assert families <= set(RANK), f"families without a layer: {sorted(families - set(RANK))}"
    assert {p.name for p in LIBRARY.iterdir() if (p / "__init__.py").is_file()} <= set(RANK)


@pytest.mark.parametrize("path", _library_files(), ids=lambda p: _relative(p))
def test_imports_go_down_the_layers(path):
    assert upward_imports(_module_name(path), path.read_text(), path.name == "__init__.py") == []


def test_subpackages_import_nothing_when_imported():
    """A subpackage's `__init__.py` is its docstring: importing `aanets_tf.hosts.registry`
    or `aanets_tf.config` starts no framework and no other family."""
    for init in LIBRARY.glob("*/__init__.py"):
        tree = ast.parse(init.read_text())
        imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                   and not (isinstance(n, ast.ImportFrom) and n.module == "__future__")]
        assert not imports, f"{_relative(init)} imports at module level"


def test_registry_imports_nothing_of_the_library_or_a_framework():
    source = (LIBRARY / "hosts" / "registry.py").read_text()
    names = [a.name for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Import)
             for a in n.names]
    names += [n.module or "" for n in ast.walk(ast.parse(source))
              if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("aanets_tf",) + FRAMEWORKS]


@pytest.mark.parametrize("module, source, expected", [
    # A data module importing the protocol, at module level and inside a function.
    ("aanets_tf.data.pipeline", "from aanets_tf.protocol import phase",
     ["data imports aanets_tf.protocol.phase (protocol)"]),
    ("aanets_tf.models.network", "def f():\n    import aanets_tf.training.learner",
     ["models imports aanets_tf.training.learner (training)"]),
    # Families of one layer are independent.
    ("aanets_tf.data.datasets", "from aanets_tf.models.network import build_network",
     ["data imports aanets_tf.models.network (models)"]),
    # The top level reads the registry, not the hosts.
    ("aanets_tf.config", "from aanets_tf.hosts import registry", []),
    ("aanets_tf.config", "from aanets_tf.hosts import host_for",
     ["foundation imports aanets_tf.hosts (hosts)"]),
    ("aanets_tf.protocol.phase", "from aanets_tf import distribute\n"
     "from aanets_tf.serving import serving\nfrom aanets_tf.training.learner import step_schedule",
     []),
    ("aanets_tf.protocol.phase", "from ..tuning import tuning",
     ["protocol imports aanets_tf.tuning.tuning (tuning)"]),
])
def test_checker_catches_upward_imports(module, source, expected):
    assert [p.split(": ", 1)[1] for p in upward_imports(module, source)] == expected


# === The frameworks' private parts ===

def _own_private_names(tree) -> set[str]:
    """Private names a file defines itself: functions, classes, attributes it assigns."""
    own = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    return {n for n in own if n.startswith("_")}


def _is_dunder(name: str) -> bool:
    return name.startswith("__") and name.endswith("__")


def _is_super_call(node) -> bool:
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
            and node.func.id == "super")


def _other_modules(tree) -> set[str]:
    """Names a file binds to modules other than the frameworks (`os`, `np`, ...)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.asname or a.name.split(".")[0] for a in node.names
                      if a.name.split(".")[0] not in FRAMEWORKS}
    return names


def _is_private_module(module: str) -> bool:
    parts = module.split(".")
    return parts[0] in FRAMEWORKS and ("src" in parts or module.startswith("tensorflow.python")
                                       or any(p.startswith("_") for p in parts))


def private_framework_uses(source: str) -> set[str]:
    """What `source` uses of a framework's private parts: private attributes it does not
    define itself (or reaches through `super()`) of anything but another library's
    module, the internals in `FRAMEWORK_INTERNALS`, and the frameworks' private modules
    (`*.src.*`, `tensorflow.python`) and names."""
    tree = ast.parse(source)
    own, other_modules = _own_private_names(tree), _other_modules(tree)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            if name in FRAMEWORK_INTERNALS:
                found.add(name)
            elif (name.startswith("_") and not _is_dunder(name)
                  and (name not in own or _is_super_call(node.value))
                  and not (isinstance(node.value, ast.Name)
                           and node.value.id in other_modules)):
                found.add(name)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _is_private_module(a.name)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in FRAMEWORKS:
            private = _is_private_module(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if private or a.name.startswith("_")}
    return found


def _shipped_uses() -> set[tuple[str, str]]:
    files = [p for d in SHIPPED for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 40
    return {(_relative(p), use) for p in files for use in private_framework_uses(p.read_text())}


def test_private_framework_parts_are_used_only_where_allowed():
    unexplained = _shipped_uses() - set(ALLOWED_PRIVATE)
    assert not unexplained, (
        f"private framework parts used without a reason in ALLOWED_PRIVATE: "
        f"{sorted(unexplained)}")


def test_allow_list_has_no_stale_entries():
    stale = set(ALLOWED_PRIVATE) - _shipped_uses()
    assert not stale, f"ALLOWED_PRIVATE lists uses that are gone: {sorted(stale)}"


def test_architecture_doc_lists_the_allow_list():
    """docs/architecture.md's table of the frameworks' internals: one row per entry."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("## Framework internals", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| `([^`]+)` \|", section, re.M)
    assert sorted(rows) == sorted(ALLOWED_PRIVATE)


@pytest.mark.parametrize("source, expected", [
    ("for layer in model._flatten_layers(include_self=False):\n    pass", {"_flatten_layers"}),
    ("ok = strategy.extended._in_multi_worker_mode()", {"_in_multi_worker_mode"}),
    ("y = tf.raw_ops.FusedBatchNormV3(x=x)", {"raw_ops"}),
    ("if model.predict_function is None:\n    pass", {"predict_function"}),
    ("from keras.src.models import functional", {"keras.src.models.functional"}),
    ("import tensorflow.python.framework.ops", {"tensorflow.python.framework.ops"}),
    ("from keras import _private", {"keras._private"}),
    # An override that calls the framework's private method through super().
    ("class M(keras.Model):\n    def _build(self):\n        super()._build()", {"_build"}),
    # The file's own private attributes, methods and helpers are not the framework's.
    ("class A:\n    def __init__(self):\n        self._n = 1\n"
     "    def _f(self):\n        return self._n + len(self.__dict__)", set()),
    ("memory = object()\nmemory._ranked = {}\nprint(memory._ranked)", set()),
    ("from aanets_tf.data.sources import _check_positions", set()),
    # Other libraries' documented private-looking names are not the frameworks'.
    ("import os\nos._exit(1)", set()),
])
def test_checker_catches_private_framework_parts(source, expected):
    assert private_framework_uses(source) == expected
