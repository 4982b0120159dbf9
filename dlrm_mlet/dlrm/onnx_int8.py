"""An exported model served int8 by ONNX Runtime: embedding tables row-wise, the rest by ORT's own quantizer.

ONNX Runtime's ``quantize_dynamic`` is what a serving team runs on an ONNX
file, but it leaves an embedding model's tables in float32: the legacy
exporter writes ``EmbeddingBag`` as a ``Loop`` whose body gathers from the
table, and the quantizer does not rewrite lookups there. The tables are
what an embedding model's bytes are, so each one read by ``Gather`` (a 2-D
float initializer) is rewritten first into the row-wise form stock DLRM's
``--quantize-emb-with-bit 8`` serves (fbgemm's prepack: one byte per value,
a float32 scale and bias per row, the same bytes): the lookup gathers the
bytes, the row's scale and bias, and computes ``q * scale + bias``, in
standard operators any ONNX runtime runs. ``quantize_dynamic`` then makes
the MLPs' weights int8. A lookup's rows equal DLRM's int8 rows.
"""

import logging
import os
import tempfile
from typing import TYPE_CHECKING, Dict, List, Tuple

import torch

from ..errors import MLETError
from ..files import StrPath, atomic_write

if TYPE_CHECKING:  # onnx: an optional dependency, imported where it is used
    import onnx

MLP_OPS = ["MatMul", "Gemm"]


def tables_to_int8(model: "onnx.ModelProto") -> List[str]:
    """Rewrite, in place, every ``Gather`` from a 2-D float32 initializer into a row-wise int8 lookup.

    Returns the names of the tables rewritten. A table read by some other
    operator too is left in float32 (its bytes are still needed).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    floats = {t.name: t for t in graph.initializer if t.data_type == TensorProto.FLOAT and len(t.dims) == 2}
    users: Dict[str, List[Tuple["onnx.GraphProto", "onnx.NodeProto"]]] = {}  # table -> (graph, node) reading it
    for g in _graphs(graph):
        for node in g.node:
            for name in node.input:
                if name in floats:
                    users.setdefault(name, []).append((g, node))
    tables = [name for name, nodes in users.items()
              if all(n.op_type == "Gather" and n.input[0] == name and _axis(n) == 0 and name not in n.input[1:]
                     for _, n in nodes)]
    for name in tables:
        weight = torch.from_numpy(numpy_helper.to_array(floats[name]).copy())
        packed = torch.ops.quantized.embedding_bag_byte_prepack(weight)  # stock DLRM's int8 format
        d = weight.shape[1]
        parts = {"int8": packed[:, :d], "scale": packed[:, d:d + 4].contiguous().view(torch.float32),
                 "bias": packed[:, d + 4:].contiguous().view(torch.float32)}
        graph.initializer.remove(floats[name])
        graph.initializer.extend(numpy_helper.from_array(v.numpy(), f"{name}.{k}") for k, v in parts.items())
        for g, node in users[name]:
            out, rows = node.output[0], node.input[1]
            replacement = [
                helper.make_node("Gather", [f"{name}.int8", rows], [f"{out}.int8"], axis=0),
                helper.make_node("Cast", [f"{out}.int8"], [f"{out}.values"], to=TensorProto.FLOAT),
                helper.make_node("Gather", [f"{name}.scale", rows], [f"{out}.scale"], axis=0),
                helper.make_node("Gather", [f"{name}.bias", rows], [f"{out}.bias"], axis=0),
                helper.make_node("Mul", [f"{out}.values", f"{out}.scale"], [f"{out}.scaled"]),
                helper.make_node("Add", [f"{out}.scaled", f"{out}.bias"], [out]),
            ]
            at = list(g.node).index(node)
            g.node.remove(node)
            for i, new in enumerate(replacement):
                g.node.insert(at + i, new)
    return tables


def quantize(model: "onnx.ModelProto") -> Tuple["onnx.ModelProto", List[str]]:
    """``model`` (an ``onnx.ModelProto``) served int8: tables row-wise (``tables_to_int8``), MLPs by ORT.

    Returns the new model and the tables' names; raises MLETError when the
    file has no table to quantize or onnxruntime is missing.
    """
    import onnx

    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError:
        raise MLETError("int8 ONNX serving needs onnxruntime: pip install onnxruntime") from None
    model = onnx.ModelProto.FromString(model.SerializeToString())
    tables = tables_to_int8(model)
    if not tables:
        raise MLETError("no embedding table found (a 2-D float initializer read only by Gather)")
    with tempfile.TemporaryDirectory() as folder:
        source, target = os.path.join(folder, "tables.onnx"), os.path.join(folder, "int8.onnx")
        onnx.save(model, source)
        quiet = logging.getLogger().level
        logging.getLogger().setLevel(logging.ERROR)  # its advice to pre-process is for convolutions
        try:
            quantize_dynamic(source, target, op_types_to_quantize=MLP_OPS, weight_type=QuantType.QInt8)
        finally:
            logging.getLogger().setLevel(quiet)
        return onnx.load(target), tables


def quantize_file(source: StrPath, target: StrPath, force: bool = False) -> List[str]:
    """``dlrm-mlet onnx-int8``: ``source`` (an exported model) written int8 to ``target``; the tables' names."""
    import onnx

    if os.path.exists(target) and not force:
        raise MLETError(f"{target} exists; pass --force to replace it")
    if not os.path.isfile(source):
        raise MLETError(f"{source}: no such file")
    try:
        model = onnx.load(source)
    except Exception as error:  # onnx raises DecodeError and others for what is not a model
        raise MLETError(f"{source}: not an ONNX model ({type(error).__name__})") from None
    quantized, tables = quantize(model)
    atomic_write(target, lambda tmp: onnx.save(quantized, tmp))
    return tables


def _graphs(graph):
    """``graph`` and every subgraph in it (a Loop's or If's body), depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _graphs(sub)


def _axis(node):
    return next((a.i for a in node.attribute if a.name == "axis"), 0)
