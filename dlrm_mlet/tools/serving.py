"""A saved model scored as a stock serving stack would run it: DLRM's int8 and int4 tables, ONNX Runtime int8.

Stock DLRM's ``--inference-only --quantize-emb-with-bit 8|4`` prepacks each plain
table row-wise, the format its quantized lookups read: 8 bits store one byte per
value and a float32 scale and bias per row, 4 bits half a byte per value and a
float16 scale and bias. A folded MLET model is a plain model, so it quantizes
the same way; QR and MD tables are not plain, and stock DLRM refuses to
quantize them. The sweep scores each saved model this way on the same
validation and test splits as the fp32 model, through patched DLRM with MLET
off (byte for byte stock), which writes ``--mlet-metrics-json``. ``onnx`` is
the model's ONNX export in ONNX Runtime, int8 (``--mlet-onnx-serving=int8``:
the tables in the same row-wise int8 bytes, the MLPs by ONNX Runtime's
dynamic quantization), scored by the same DLRM loop.
"""

import importlib.util
import json
import os
import subprocess
import sys
from typing import TYPE_CHECKING, Any, Collection, Dict, Iterable, List, Mapping, Optional, Sequence, Union, cast

from ..errors import MLETError

if TYPE_CHECKING:  # this module imports no torch (the CLI reads PRECISIONS)
    import torch

BITS = (8, 4)
ONNX = "onnx"
PRECISIONS = BITS + (ONNX,)  # what sweep --quantize takes
Precision = Union[int, str]  # one of PRECISIONS: 8 or 4 (bits), or ONNX
# Bytes per row beyond the packed values: scale and bias (float32 at 8 bits, float16 at 4 bits)
ROW_OVERHEAD = {8: 8, 4: 4}
REFUSED_TABLES = ("--qr-flag", "--md-flag")


def name(precision: Precision) -> str:
    """A precision's name in CSV columns and reports: int8, int4, onnx_int8."""
    return "onnx_int8" if precision == ONNX else f"int{precision}"


def fields(precision: Precision) -> List[str]:
    """The CSV columns one precision fills."""
    return [f"{column}_{name(precision)}" for column in ("val_auc", "test_auc", "test_log_loss",
                                                          "inference_embedding_bytes")]


def packed_row_bytes(d: int, bits: int) -> int:
    """Bytes of one row of a ``d``-wide table in DLRM's prepacked int8/int4 format."""
    return (d if bits == 8 else (d + 1) // 2) + ROW_OVERHEAD[bits]


def quantized_bytes(state_dict: Mapping[str, "torch.Tensor"], precision: Precision) -> int:
    """Bytes of a plain model's tables (``emb_l.<i>.weight``) as ``precision`` serves them (ONNX: int8's)."""
    bits = 8 if precision == ONNX else cast(int, precision)  # ONNX is the one precision that is not bits
    tables = [v for key, v in state_dict.items() if key.startswith("emb_l.") and key.endswith(".weight")]
    return sum(t.shape[0] * packed_row_bytes(t.shape[1], bits) for t in tables)


def check(precisions: Collection[Precision], widths: Iterable[int], dlrm_args: Sequence[str]) -> None:
    """Refuse, before any training, a precision that cannot be served for these runs."""
    for p in precisions:
        if p not in PRECISIONS:
            raise MLETError(f"--quantize: expected 8, 4 (stock DLRM's tables) or onnx (ONNX Runtime int8), not {p}")
    if not precisions:
        return
    tricks = [flag for flag in REFUSED_TABLES if flag in dlrm_args]
    if tricks:
        raise MLETError(f"--quantize with {tricks[0]}: quantized serving is scored for plain tables only (stock "
                        "DLRM refuses --quantize-emb-with-bit with QR or MD tables); sweep these without --quantize")
    if any(a.startswith("--quantize-emb-with-bit") for a in dlrm_args):
        raise MLETError("give serving precisions with --quantize, not --quantize-emb-with-bit after --")
    if ONNX in precisions and importlib.util.find_spec("onnxruntime") is None:
        raise MLETError("--quantize onnx runs the models in ONNX Runtime: pip install onnxruntime")
    odd = [d for d in widths if d % 2]
    if 4 in precisions and odd:
        raise MLETError(f"--quantize 4: DLRM's 4-bit tables need an even width, not d={odd[0]}")


def score(script: str, args: Sequence[str], model: str, precision: Precision, folder: str,
          env: Optional[Mapping[str, str]] = None) -> Dict[str, Any]:
    """The metric columns of ``model`` served at ``precision``: validation AUC, test AUC and log loss.

    ``args`` are the run's own DLRM arguments (architecture, data, seed) without
    ``--mlet-*`` options; the model must have plain tables.
    """
    metrics, log = (os.path.join(folder, f"{name(precision)}.{ext}") for ext in ("json", "log"))
    flag = "--mlet-onnx-serving=int8" if precision == ONNX else f"--quantize-emb-with-bit={precision}"
    command = [sys.executable, script, *args, "--inference-only", f"--load-model={model}", flag,
               f"--mlet-metrics-json={metrics}"]
    # A baseline's file is stock's own save, numpy scalars inside: stock loads it only this way
    env = dict(env or os.environ, TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD="1")
    with open(log, "w") as out:
        proc = subprocess.run(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, env=env)
    if proc.returncode != 0 or not os.path.exists(metrics):
        tail = (open(log).read().strip().splitlines() or ["no output"])[-1]
        raise MLETError(f"scoring {model} as {name(precision)} failed ({tail}); full log: {log}")
    with open(metrics) as handle:
        result = json.load(handle)
    val = result.get("validation") or {}
    values = [val.get("auc"), result["auc"], result["log_loss"]]
    return {field: "" if value is None else value for field, value in zip(fields(precision), values)}
