"""The HTTP layer's ceiling: the same request schema as the model server, no model behind it."""

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from api.schemas import build_record_model
from pipeline.schema import DatasetSchema


def create_app() -> FastAPI:
    schema = DatasetSchema.model_validate(json.loads(Path(os.environ["BENCH_SCHEMA"]).read_text()))
    record_model = build_record_model(schema, closed_categories=True)
    app = FastAPI()

    @app.post("/predict")
    async def predict(record: record_model) -> dict[str, Any]:  # type: ignore[valid-type]
        fields = len(record.model_dump())  # type: ignore[attr-defined]
        return {"prediction": 0, "probabilities": {"0": 1.0, "1": 0.0}, "record": fields}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
