"""A model version compiled to ONNX and run with ONNX Runtime: what the model server answers with
when the version passed its parity check (`pipeline.stages.compile_onnx`).

The graph takes one input per feature, named after it: numbers as a float or double column (the
graph says which), categories as strings with a missing value spelled `MISSING_CATEGORY`, the
value the scikit-learn pipeline imputes. An ONNX file is data, not code, as long as it names only
the standard operator sets and keeps its weights inside: `check_graph` refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel

from core.errors import BitloopError
from core.registry import COMPILED_TAG
from core.schema import MISSING_CATEGORY, DatasetSchema

ONNX_RUNTIME = "onnx"
SKLEARN_RUNTIME = "sklearn"
TRUSTED_DOMAINS = frozenset({"", "ai.onnx", "ai.onnx.ml"})
PROBABILITIES = "probabilities"
_DTYPES = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(string)": np.object_}


class UnsafeGraph(BitloopError, ValueError):
    """An ONNX file this server will not run; the message says why."""


def check_graph(data: bytes) -> None:
    """Refuse a graph that needs custom operators (native code) or reads weights from other files."""
    import onnx

    try:
        model = onnx.load_from_string(data)
    except Exception as err:  # protobuf raises its own DecodeError
        raise UnsafeGraph(f"not an ONNX model ({type(err).__name__})") from None
    if foreign := sorted({o.domain for o in model.opset_import} - TRUSTED_DOMAINS):
        raise UnsafeGraph(f"the graph needs operator sets outside the ONNX standard: {foreign}")
    if any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph)):
        raise UnsafeGraph("the graph reads weights from external files")


def _tensors(graph: Any) -> Iterable[Any]:
    """Every tensor a graph holds: initialisers and node attributes, subgraphs included."""
    yield from graph.initializer
    yield from (s.values for s in graph.sparse_initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for subgraph in [attribute.g] * attribute.HasField("g") + list(attribute.graphs):
                yield from _tensors(subgraph)


class Compilation(BaseModel):
    """What compiling one candidate gave: the parity figures, or why there is no compiled runtime."""

    runtime: str = ONNX_RUNTIME
    status: Literal["passed", "failed", "error"]
    error: str | None = None
    rows: int = 0
    max_abs_diff: float | None = None
    max_rel_diff: float | None = None
    label_mismatches: int | None = None
    seconds: float = 0.0

    @property
    def servable(self) -> bool:
        return self.status == "passed"

    def tags(self) -> dict[str, str]:
        """The figures as `bitloop.compiled.*` tags of the run and the model version."""
        values = self.model_dump(exclude_none=True)
        if "error" in values:
            values["error"] = values["error"][:500]
        return {COMPILED_TAG + k: f"{v:.3g}" if isinstance(v, float) else str(v) for k, v in values.items()}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Compilation | None:
        """The compilation a version's tags record, or None for a version registered without one."""
        found = {k.removeprefix(COMPILED_TAG): v for k, v in tags.items() if k.startswith(COMPILED_TAG)}
        return cls.model_validate(found) if "status" in found else None


def _category(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING_CATEGORY
    return str(value)


class CompiledModel:
    """An ONNX Runtime session on one native thread, answering probabilities or values as float64."""

    def __init__(self, data: bytes, schema: DatasetSchema) -> None:
        import onnxruntime as ort

        check_graph(data)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # one native thread per inference thread, like scikit-learn here
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        self.schema = schema
        self._dtypes = {i.name: _DTYPES.get(i.type) for i in self.session.get_inputs()}
        if sorted(self._dtypes) != sorted(schema.feature_names) or None in self._dtypes.values():
            raise UnsafeGraph(
                f"the graph's inputs {sorted(self._dtypes)} are not the schema's features as tensors "
                f"of float, double or string"
            )
        outputs = [o.name for o in self.session.get_outputs()]
        self._output = PROBABILITIES if schema.task == "classification" else outputs[0]
        if self._output not in outputs:
            raise UnsafeGraph(f"the graph has no {self._output!r} output, only {outputs}")

    def _column(self, name: str, values: Iterable[Any]) -> np.ndarray:
        dtype = self._dtypes[name]
        if dtype is np.object_:
            return np.array([_category(v) for v in values], dtype=object).reshape(-1, 1)
        # None becomes NaN in a float array, as in the frame scikit-learn receives.
        return np.array(list(values), dtype=np.float64).astype(dtype, copy=False).reshape(-1, 1)

    def run(self, columns: Mapping[str, Iterable[Any]]) -> np.ndarray:
        """Probabilities (rows x classes) for classification, values (rows,) for regression."""
        feed = {name: self._column(name, columns[name]) for name in self._dtypes}
        out = np.asarray(self.session.run([self._output], feed)[0], dtype=np.float64)
        return out if self.schema.task == "classification" else out.reshape(-1)

    def run_records(self, records: list[dict[str, Any]]) -> np.ndarray:
        return self.run({name: [r[name] for r in records] for name in self._dtypes})

    def run_frame(self, frame: pd.DataFrame) -> np.ndarray:
        return self.run({name: frame[name].tolist() for name in self._dtypes})
