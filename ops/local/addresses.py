"""What `make up` shows people: the links it prints, in one table for either stack."""

from __future__ import annotations

# MLflow's UI opens on its GenAI view; this link opens the model-training one (experiments, runs,
# the registry), which the UI then remembers.
MLFLOW_TRAINING_VIEW = "/#/experiments?workflowType=machine_learning"


def print_table(rows: list[tuple[str, str, str]]) -> None:
    """Rows of name, URL and a note, each column starting at one place."""
    names = max(len(name) for name, _, _ in rows)
    urls = max(len(url) for _, url, note in rows if note)
    for name, url, note in rows:
        print(f"  {name:<{names}}  {url:<{urls}}  {note}".rstrip())
