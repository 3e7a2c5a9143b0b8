"""The data-source service: simulated batches over HTTP (`GET /batch?n=&seed=&drift=`)."""

from __future__ import annotations

import io
from typing import Annotated, Literal

from fastapi import FastAPI, Query
from fastapi.responses import Response

from pipeline.sources.simulated import simulate_churn

MAX_ROWS = 100_000


def create_app() -> FastAPI:
    app = FastAPI(title="bitloop data source", description="Seeded customer-churn batches with a drift knob.")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/batch", responses={200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
    def batch(
        n: Annotated[int, Query(ge=1, le=MAX_ROWS, description="rows in the batch")] = 1000,
        seed: Annotated[int, Query(ge=0, description="same seed, same rows")] = 0,
        drift: Annotated[float, Query(ge=0.0, le=1.0, description="0 = reference, 1 = drifted")] = 0.0,
        format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    ) -> Response:
        frame = simulate_churn(n, seed, drift)
        if format == "parquet":
            buffer = io.BytesIO()
            frame.to_parquet(buffer, index=False)
            return Response(buffer.getvalue(), media_type="application/vnd.apache.parquet")
        return Response(frame.to_csv(index=False), media_type="text/csv")

    return app
