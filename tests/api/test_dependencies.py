"""The model server imports only what its image installs: no MLflow server, no plots."""

from __future__ import annotations

import subprocess
import sys

from tests.factories import PROJECT

# What the api and datasource images leave out (mlflow-skinny instead of mlflow; no plotting).
ABSENT = ("matplotlib", "flask", "sqlalchemy", "alembic", "gunicorn")


def test_the_model_server_starts_without_the_packages_its_image_leaves_out() -> None:
    code = (
        "import sys\n"
        f"for name in {ABSENT!r}:\n"
        "    sys.modules[name] = None  # any import of it fails\n"
        "import api.main, api.model, api.manager, pipeline.loop.monitor, core.serialization\n"
        "from api.main import create_app\n"
        "create_app()\n"
        "print('imported')\n"
    )
    command = [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=PROJECT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("imported")


def test_the_data_source_serves_without_the_training_libraries() -> None:
    """The datasource image has the api's packages but ONNX Runtime's: `serve-data` needs nothing more."""
    code = (
        "import sys\n"
        f"for name in {(*ABSENT, 'onnxruntime', 'onnx')!r}:\n"
        "    sys.modules[name] = None\n"
        "import uvicorn\n"
        "uvicorn.run = lambda *args, **kwargs: print('served')\n"
        "from pipeline.__main__ import main\n"
        "sys.exit(main(['serve-data', '--port', '1']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=PROJECT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("served")
