"""`make up`'s first champions, on either stack: each model params.yaml declares that has no
@champion gets one run of its own training DAG (all at once), then the model server is waited for
until it serves them all."""

from __future__ import annotations

import os
import time

import httpx

from ops.local.airflow_api import run_training_dags, training_dag_id
from ops.local.settings import PROJECT, StackSettings


def _without_champion(settings: StackSettings, models: list[str]) -> list[str]:
    """Those of `models` that have no @champion in the registry."""
    from core.registry import CHAMPION, alias_version, connect
    from core.settings import PipelineSettings

    client = connect(PipelineSettings(mlflow_tracking_uri=f"http://127.0.0.1:{settings.mlflow_port}"))
    return [name for name in models if alias_version(client, name, CHAMPION) is None]


def ensure_champion(settings: StackSettings, airflow_password: str | None = None) -> None:
    """Run the training DAG of each model params.yaml declares once when the registry has no champion
    for it yet, all at once. `airflow_password`: the admin's (default: the local stack's)."""
    from core.params import load_models

    models = list(load_models(PROJECT / "params.yaml"))  # the default model first
    untrained = _without_champion(settings, models)
    for name in untrained:
        print(f"no champion of {name} yet: running its training DAG in Airflow", flush=True)
    if untrained:
        dag_ids = [training_dag_id(name, default=name == models[0]) for name in untrained]
        run_training_dags(settings, dag_ids, airflow_password)
    if missing := _without_champion(settings, models):
        raise SystemExit(
            f"the training DAG ran but promoted no candidate of {', '.join(missing)}: "
            "see reports/<model>/promotion.json"
        )


def wait_serving(settings: StackSettings, api_key: str | None = None) -> None:
    """Have the model server check the registry now, then wait until it serves every model's
    champion (a model past BITLOOP_API_MAX_LOADED_MODELS may stay unloaded). `api_key`: the model
    server's (default: BITLOOP_API_API_KEY)."""
    api = f"http://127.0.0.1:{settings.api_port}"
    key = api_key or os.environ.get("BITLOOP_API_API_KEY")
    headers = {"X-API-Key": key} if key else {}
    deadline = time.monotonic() + settings.start_timeout
    waiting = ["the champion"]
    while time.monotonic() < deadline:
        try:
            httpx.post(f"{api}/admin/reload", headers=headers, timeout=30.0)
            models = httpx.get(f"{api}/models", timeout=5.0).json()["models"]
            waiting = [m["name"] for m in models if m["state"] not in ("serving", "unloaded")]
            if not waiting and httpx.get(f"{api}/ready", timeout=5.0).status_code == 200:
                return
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        print(f"  waiting for the model server to load {', '.join(waiting)}", flush=True)
        time.sleep(2.0)
    raise SystemExit(
        f"the model server did not load {', '.join(waiting)}; "
        f"see {api}/models and {settings.state_dir}/logs/api.log"
    )
