"""``--mlet-onnx-serving``: DLRM's test scored by ONNX Runtime running the loaded model's ONNX export.

A serving team that exports with ``--save-onnx`` runs the file in ONNX
Runtime, often int8 (``onnx_int8.py``, beside this module). To measure what that costs in
AUC on exactly DLRM's test and validation splits, the loaded model's
forward is replaced by a session over its export, made at the first batch
with DLRM's own export call (legacy exporter, opset 11, its input names and
dynamic batch axes), so DLRM's inference loop and ``--mlet-metrics-json``
score what ONNX Runtime predicts.
"""

import io

import numpy as np
import torch
from torch import nn

from . import onnx_int8

PRECISIONS = ("fp32", "int8")


class OnnxForward:
    """A DLRM model's forward, run by ONNX Runtime on the model's export (made at the first call)."""

    def __init__(self, model, precision):
        self.model, self.precision, self.session = model, precision, None

    def __call__(self, dense_x, offsets, indices):
        inputs = _inputs(dense_x, offsets, indices)
        if self.session is None:
            self.session = self._session(dense_x, offsets, indices, list(inputs))
        return torch.from_numpy(self.session.run(None, inputs)[0])

    def _session(self, dense_x, offsets, indices, names):
        import onnx
        import onnxruntime

        buffer = io.BytesIO()
        del self.model.forward  # the export traces the model's own forward
        try:
            with torch.no_grad():
                torch.onnx.export(self.model, (dense_x, offsets, indices), buffer, opset_version=11,
                                  input_names=names, output_names=["pred"], dynamic_axes=_dynamic_axes(names),
                                  dynamo=False)
        finally:
            self.model.forward = self
        exported = onnx.load_from_string(buffer.getvalue())
        if self.precision == "int8":
            exported, _ = onnx_int8.quantize(exported)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its notes on renaming a Loop's inputs are not the user's concern
        options.intra_op_num_threads = torch.get_num_threads()
        print(f"MLET: scoring the model as ONNX Runtime serves its {self.precision} ONNX export", flush=True)
        return onnxruntime.InferenceSession(exported.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])


def install(model: nn.Module, precision: str) -> None:
    """Make ``model``'s forward the ONNX Runtime one (DLRM calls ``dlrm(X, lS_o, lS_i)``)."""
    model.forward = OnnxForward(model, precision)


def _inputs(dense_x, offsets, indices):
    """The session's feed, named as DLRM's ``--save-onnx`` names its inputs."""
    feed = {"dense_x": dense_x.numpy()}
    for name, value in (("offsets", offsets), ("indices", indices)):
        if torch.is_tensor(value):
            feed[name] = value.numpy()
        else:
            feed.update({f"{name}_{i}": v.numpy() for i, v in enumerate(value)})
    return {k: np.ascontiguousarray(v) for k, v in feed.items()}


def _dynamic_axes(names):
    """DLRM's: the batch axis of every input (axis 1 of stacked offsets and indices) and of ``pred``."""
    axes = {"pred": {0: "batch_size"}}
    for name in names:
        axes[name] = {1 if name in ("offsets", "indices") else 0: "batch_size"}
    return axes
