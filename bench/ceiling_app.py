"""The HTTP layer's ceilings: the same request schema as the model server and no model behind it
(`/predict`), and bare JSON in, JSON out with no validation at all (`/bare`)."""

import json
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response

from api.schemas import build_record_model
from core.schema import DatasetSchema


def create_app() -> FastAPI:
    schema = DatasetSchema.model_validate(json.loads(Path(os.environ["BENCH_SCHEMA"]).read_text()))
    record_model = build_record_model(schema, closed_categories=True)
    app = FastAPI()

    @app.post("/predict")
    async def predict(record: record_model) -> dict[str, Any]:  # type: ignore[valid-type]
        fields = len(record.model_dump())  # type: ignore[attr-defined]
        return {"prediction": 0, "probabilities": {"0": 1.0, "1": 0.0}, "record": fields}

    @app.post("/bare")
    async def bare(request: Request) -> Response:
        fields = len(json.loads(await request.body()))
        answer = {"prediction": 0, "probabilities": {"0": 1.0, "1": 0.0}, "record": fields}
        return Response(json.dumps(answer), media_type="application/json")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app
