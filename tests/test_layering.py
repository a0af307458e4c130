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
# Inside `pipeline`, one importer per external API; pure modules import none of them. MLflow's
# runs and models are split over two modules, and mlflow_pyfunc.py is the logged model's own code.
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


def test_one_importer_per_external_api_inside_pipeline():
    for path in sorted((ROOT / "pipeline").rglob("*.py")):
        imported = imports_of(path)
        for api, owner in SOLE_IMPORTER.items():
            uses = {name for name in imported if name == api or name.startswith(f"{api}.")}
            assert not uses or path.name in owner, f"{path.name} imports {sorted(uses)}"
        if path.name in PURE:
            impure = {n for n in imported if n.split(".")[0] in ("ray", "mlflow")}
            assert not impure, f"{path.name} should stay pure but imports {sorted(impure)}"
