"""`python -m api`: run the model server under uvicorn with the settings from the environment."""

from __future__ import annotations

import os

import uvicorn

from api.settings import ApiSettings
from api.spill import SpillDirectory
from core.errors import ServiceUnavailable
from core.logs import configure_logging
from core.predictions.backends import open_store


def main() -> None:
    settings = ApiSettings()
    configure_logging()
    if problem := settings.startup_problem():
        raise SystemExit(f"bitloop model server cannot start: {problem}")
    try:
        open_store(settings.prediction_log_url).close()  # migrating takes the write lock
        if settings.prediction_log_spill_dir is not None:
            SpillDirectory(settings.prediction_log_spill_dir, 0).close()
    except ServiceUnavailable as err:  # the prediction log or the spill directory
        raise SystemExit(f"bitloop model server cannot start: {err}") from None
    for switch in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(switch, "true")
    # Models are read by core.serialization (skops, our trust list); MLflow itself never unpickles.
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"
    uvicorn.run(
        "api.main:create_app",
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=settings.workers,
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
