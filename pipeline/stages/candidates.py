"""The fitted candidates a workspace holds: written by `train`, read by evaluate, register, reproduce.

They are pickles this project wrote itself into its own workspace, never user input; what the
registry stores and the model server loads is skops (`core.serialization`).
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sklearn.pipeline import Pipeline


def save_candidate(model: Pipeline, path: Path) -> None:
    path.write_bytes(pickle.dumps(model, protocol=5))


def load_candidate(path: Path) -> Pipeline:
    """A fitted candidate written by `save_candidate`."""
    with path.open("rb") as handle:
        model: Pipeline = pickle.load(handle)  # noqa: S301 - our own artefact, never user input
    return model
