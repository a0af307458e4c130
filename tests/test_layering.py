"""Dependency direction (STYLE.md section 1), checked in fresh interpreters and in the source."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "pixelrnn_model": ("ray", "mlflow", "pipeline", "tune_spaces", "pyarrow", "yaml"),
    "tune_spaces": ("torch", "pixelrnn_model", "pipeline", "mlflow"),
}
# Inside `pipeline` (paths relative to it), one importer per external API; pure modules import
# none of them. MLflow's runs and models are split over two modules, and mlflow_pyfunc.py is the
# logged model's own code.
SOLE_IMPORTER = {
    "ray.train": ("train.py",),
    "ray.tune": ("tune.py",),
    "mlflow": ("tracking.py", "tracking_models.py", "mlflow_pyfunc.py"),
}
PURE = (
    "config.py",
    "engine.py",
    "checkpointing.py",
    "images.py",
    "runs.py",
    "sweeps.py",
    "compare.py",
)
# The layers of `pipeline`, top to bottom: a module imports its own layer or the ones below it.
# Everything not named here is a service (data, tracking, storage, checkpointing, ...).
ORCHESTRATION = ("train.py", "tune.py", "sweeps.py", "runs.py")
LAYERS = ("command line", "orchestration", "services")


def loaded_modules(package: str) -> set[str]:
    code = (
        "import importlib, json, pkgutil, sys\n"
        f"package = importlib.import_module({package!r})\n"
        "for info in pkgutil.walk_packages(package.__path__, package.__name__ + '.'):\n"
        "    importlib.import_module(info.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_nothing_forbidden(package):
    modules = loaded_modules(package)
    for forbidden in FORBIDDEN[package]:
        leaked = sorted(m for m in modules if m == forbidden or m.startswith(f"{forbidden}."))
        assert not leaked, f"importing {package} loads {leaked[:5]}"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def pipeline_modules() -> dict[str, Path]:
    """Every module of `pipeline` by its path relative to the package ("cli/train.py")."""
    package = ROOT / "pipeline"
    return {path.relative_to(package).as_posix(): path for path in sorted(package.rglob("*.py"))}


def layer_of(relative: str) -> str:
    if relative.startswith("cli/") or relative == "__main__.py":
        return "command line"
    return "orchestration" if relative in ORCHESTRATION else "services"


def module_path(name: str, modules: dict[str, Path]) -> str | None:
    """The relative path of the `pipeline` module an imported name refers to, if any."""
    parts = name.split(".")
    if parts[0] != "pipeline":
        return None
    for end in range(len(parts), 1, -1):  # "pipeline.cli.options.load_experiment" -> cli/options
        stem = "/".join(parts[1:end])
        for candidate in (f"{stem}.py", f"{stem}/__init__.py"):
            if candidate in modules:
                return candidate
    return None


def test_one_importer_per_external_api_inside_pipeline():
    for relative, path in pipeline_modules().items():
        imported = imports_of(path)
        for api, owner in SOLE_IMPORTER.items():
            uses = {name for name in imported if name == api or name.startswith(f"{api}.")}
            assert not uses or relative in owner, f"{relative} imports {sorted(uses)}"
        if relative in PURE:
            impure = {n for n in imported if n.split(".")[0] in ("ray", "mlflow")}
            assert not impure, f"{relative} should stay pure but imports {sorted(impure)}"


def test_pipeline_imports_point_down_the_layers():
    """Command line -> orchestration -> services: nothing imports a layer above its own, so only
    the command line imports `pipeline.cli`."""
    modules = pipeline_modules()
    assert layer_of("cli/train.py") == "command line" and layer_of("train.py") == "orchestration"
    for relative, path in modules.items():
        rank = LAYERS.index(layer_of(relative))
        for name in imports_of(path):
            target = module_path(name, modules)
            if target is not None:
                above = LAYERS.index(layer_of(target)) < rank
                assert not above, (
                    f"{relative} ({LAYERS[rank]}) imports {target} ({layer_of(target)})"
                )


def test_commands_share_options_through_cli_options_not_each_other():
    modules = pipeline_modules()
    shared = {"cli/__init__.py", "cli/options.py"}
    commands = [m for m in modules if m.startswith("cli/") and m not in {*shared, "cli/main.py"}]
    assert "cli/sample.py" in commands and "cli/evaluate.py" in commands
    for relative in commands:
        targets = {module_path(name, modules) for name in imports_of(modules[relative])}
        others = sorted(t for t in targets if t and t.startswith("cli/") and t not in shared)
        assert not others, f"{relative} imports the commands {others}"
