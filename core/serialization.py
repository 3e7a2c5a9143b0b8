"""The one way a registered model is written and read: skops, with a trust list decided here.

MLflow can store a scikit-learn model as pickle, cloudpickle or skops; loading either pickle
runs whatever code the file names, and even skops trusts the types listed in the model's own
MLmodel file, which whoever wrote the model controls. So the model server and `reproduce`
never call `mlflow.sklearn.load_model`: they accept the skops format only, ask skops which
types the file holds, trust those only when every one comes from numpy, scikit-learn or SciPy,
and refuse anything else with a reason. MLflow's own unpickling is switched off in the model
server (`MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from core.errors import BitloopError

SKOPS = "skops"
TRUSTED_MODULES = ("numpy", "sklearn", "scipy")
"""Top-level packages whose types a model may hold."""


class UntrustedModel(BitloopError, ValueError):
    """A model file this server will not deserialise; the message says why."""


def foreign_types(types: list[str]) -> list[str]:
    """The types outside numpy, scikit-learn and SciPy."""
    return sorted(t for t in types if t.split(".")[0] not in TRUSTED_MODULES)


def trusted_types(model: Any) -> list[str]:
    """The types skops must be told to trust to save `model`; refuses any outside the trusted modules."""
    import skops.io

    untrusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    if foreign := foreign_types(untrusted):
        raise UntrustedModel(f"the model holds types outside numpy/scikit-learn/SciPy: {foreign}")
    return list(untrusted)


def load_sklearn_model(model_dir: Path) -> Any:
    """The scikit-learn model of an MLflow model directory, read with skops and our own trust list."""
    import skops.io

    mlmodel = model_dir / "MLmodel"
    try:
        flavor = yaml.safe_load(mlmodel.read_text())["flavors"]["sklearn"]
    except (OSError, KeyError, TypeError, yaml.YAMLError) as err:
        raise UntrustedModel(f"{mlmodel} does not describe a scikit-learn model ({err})") from None
    fmt = flavor.get("serialization_format")
    if fmt != SKOPS:
        raise UntrustedModel(
            f"the model is stored as {fmt!r}: only the skops format is loaded, since pickle runs code"
        )
    path = model_dir / flavor.get("pickled_model", "model.skops")
    if path.parent.resolve() != model_dir.resolve():  # the file name comes from the model's metadata
        raise UntrustedModel(f"the model file {flavor.get('pickled_model')!r} is outside the model directory")
    try:
        types = skops.io.get_untrusted_types(file=path)
    except Exception as err:  # skops raises several types for a corrupt file
        raise UntrustedModel(f"{path.name} is not a readable skops file ({type(err).__name__})") from err
    if foreign := foreign_types(types):
        raise UntrustedModel(f"the model holds types outside numpy/scikit-learn/SciPy: {foreign}")
    return skops.io.load(path, trusted=types)
