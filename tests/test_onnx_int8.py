"""ONNX Runtime int8 serving: the tables' lookups are DLRM's int8 rows; what is not a table stays float."""

import io

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dlrm_mlet.cli import main  # noqa: E402
from dlrm_mlet.errors import MLETError  # noqa: E402
from dlrm_mlet.dlrm.onnx_int8 import quantize, quantize_file, tables_to_int8  # noqa: E402

ROWS, D, L, B = (300, 50), 8, 3, 16


class Bags(torch.nn.Module):
    """Two summed bags, as DLRM's tables are, and an MLP on them."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.ModuleList(torch.nn.EmbeddingBag(n, D, mode="sum") for n in ROWS)
        self.mlp = torch.nn.Linear(2 * D, 1)

    def forward(self, offsets, indices_0, indices_1):
        pooled = [bag(i, o) for bag, i, o in zip(self.emb, (indices_0, indices_1), offsets)]
        return torch.sigmoid(self.mlp(torch.cat(pooled, dim=1)))


def exported(model, inputs, names, fold_constants=True):
    buffer = io.BytesIO()
    torch.onnx.export(model, inputs, buffer, opset_version=11, input_names=names, output_names=["pred"],
                      dynamic_axes={n: {0 if n != "offsets" else 1: "b"} for n in names}, dynamo=False,
                      do_constant_folding=fold_constants)
    return onnx.load_from_string(buffer.getvalue())


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    offsets = torch.arange(0, B * L, L).repeat(2, 1)
    return offsets, *(torch.randint(0, n, (B * L,), generator=g) for n in ROWS)


def run(model, inputs):
    names = ["offsets", "indices_0", "indices_1"]
    return ort.InferenceSession(model.SerializeToString()).run(None, dict(zip(names, (x.numpy() for x in inputs))))[0]


def test_int8_lookups_are_dlrms_int8_rows_and_the_tables_shrink_to_its_bytes():
    torch.manual_seed(0)
    model = Bags().eval()
    inputs = batch()
    proto = exported(model, inputs, ["offsets", "indices_0", "indices_1"])
    tables = tables_to_int8(proto)
    assert tables == ["emb.0.weight", "emb.1.weight"]
    sizes = {t.name: onnx.numpy_helper.to_array(t).nbytes for t in proto.graph.initializer}
    assert not set(tables) & set(sizes)
    assert sum(sizes[f"{t}.{p}"] for t in tables for p in ("int8", "scale", "bias")) == sum(n * (D + 8) for n in ROWS)
    # What stock DLRM's --quantize-emb-with-bit 8 computes: fbgemm's prepacked rows, pooled
    with torch.no_grad():
        pooled = [torch.ops.quantized.embedding_bag_byte_rowwise_offsets(
            torch.ops.quantized.embedding_bag_byte_prepack(bag.weight), i, o, mode=0)
            for bag, i, o in zip(model.emb, inputs[1:], inputs[0])]
        expected = torch.sigmoid(model.mlp(torch.cat(pooled, dim=1))).numpy()
        fp32 = model(*inputs).numpy()
    got = run(proto, inputs)
    assert np.abs(got - expected).max() < 1e-5
    assert np.abs(got - fp32).max() > 1e-7  # really quantized
    # The whole graph: MLP weights int8 as well, predictions still close
    whole, names = quantize(exported(model, inputs, ["offsets", "indices_0", "indices_1"]))
    assert names == tables
    assert any(n.op_type == "MatMulInteger" for n in whole.graph.node)
    assert np.abs(run(whole, batch(1)) - model(*batch(1)).detach().numpy()).max() < 0.02


class Tied(torch.nn.Module):
    """An embedding whose weight is also the output layer's: not a table alone."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(40, D)

    def forward(self, ids):
        return self.emb(ids) @ self.emb.weight.t()


def test_a_weight_read_by_more_than_lookups_stays_float32(tmp_path):
    model = Tied().eval()
    proto = exported(model, (torch.tensor([1, 2, 3]),), ["ids"], fold_constants=False)  # Transpose reads it
    assert tables_to_int8(onnx.load_from_string(proto.SerializeToString())) == []
    with pytest.raises(MLETError, match="no embedding table found"):
        quantize(proto)


def test_onnx_int8_command_writes_a_new_file_and_refuses_to_replace_one(tmp_path, capsys):
    source, target = tmp_path / "m.onnx", tmp_path / "m.int8.onnx"
    onnx.save(exported(Bags().eval(), batch(), ["offsets", "indices_0", "indices_1"]), source)
    assert main(["onnx-int8", str(source), str(target)]) == 0
    assert "2 tables" in capsys.readouterr().out
    weights = lambda path: sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)  # noqa: E731
    assert weights(source) - weights(target) >= sum(n * (4 * D - D - 8) for n in ROWS)  # fp32 -> DLRM's int8 rows
    assert main(["onnx-int8", str(source), str(target)]) == 2
    assert "pass --force" in capsys.readouterr().err
    (tmp_path / "not.onnx").write_text("hello")
    with pytest.raises(MLETError, match="not an ONNX model"):
        quantize_file(tmp_path / "not.onnx", tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists()
