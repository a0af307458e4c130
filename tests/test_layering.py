"""The model and tune-space packages stay free of infrastructure imports (checked in fresh
interpreters, so nothing imported by other tests can hide a violation)."""

import subprocess
import sys

import pytest

FORBIDDEN = {
    "pixelrnn_model": ("ray", "mlflow", "pipeline", "tune_spaces", "pyarrow", "yaml"),
    "tune_spaces": ("torch", "pixelrnn_model", "pipeline", "mlflow"),
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_imports_no_forbidden_modules(package):
    forbidden = FORBIDDEN[package]
    code = (
        f"import sys, importlib, pkgutil\n"
        f"pkg = importlib.import_module({package!r})\n"
        f"for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.'):\n"
        f"    importlib.import_module(info.name)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {forbidden!r})\n"
        f"print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"{package} imports {result.stdout.strip()}"
