"""A folded MLET TorchRec model is served as any stock one: TorchRec's own int8/int4 quantization."""

import copy

import pytest
import torch

pytest.importorskip("torchrec")

from torchrec.inference.modules import quantize_inference_model  # noqa: E402
from torchrec.quant.embedding_modules import EmbeddingBagCollection as QuantEmbeddingBagCollection  # noqa: E402

from dlrm_mlet.dlrm.evaluation import binary_metrics  # noqa: E402
from dlrm_mlet.torchrec import fold_torchrec_state_dict, mlet_dlrm  # noqa: E402
from test_torchrec import DENSE_IN, DENSE_LAYERS, K, OVER_LAYERS, make_batch, stock_dlrm, tables  # noqa: E402

# Measured (seed 0, 400 steps, torch 2.13 + TorchRec 1.8): AUC 0.8086 fp32, 0.8086 int8, 0.8085
# int4 on 4,096 held-out samples; the largest probability change 9.6e-5 (int8) and 3.1e-3 (int4).
# The bounds leave room for other builds.
AUC_TOLERANCE = {torch.qint8: 0.002, torch.quint4x2: 0.005}


def test_a_folded_mlet_torchrec_model_quantizes_with_torchrecs_own_tools_and_keeps_its_auc():
    torch.manual_seed(0)
    model = mlet_dlrm(tables(), K, DENSE_IN, DENSE_LAYERS, OVER_LAYERS)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(400):
        dense, kjt, labels = make_batch(64, seed=100 + step)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(dense, kjt).squeeze(1), labels.float())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    stock = stock_dlrm()
    stock.load_state_dict(fold_torchrec_state_dict(model), strict=True)
    dense, kjt, labels = make_batch(4096, seed=1)
    with torch.no_grad():
        fp32 = torch.sigmoid(stock(dense, kjt)).squeeze(1)
    base = binary_metrics(fp32.numpy(), labels.numpy())["auc"]
    assert base > 0.75  # the model learned the task (chance: 0.5): a quantization error could show
    for dtype, tolerance in AUC_TOLERANCE.items():
        served = quantize_inference_model(copy.deepcopy(stock), quantization_dtype=dtype)  # in place: a copy
        assert type(served.sparse_arch.embedding_bag_collection) is QuantEmbeddingBagCollection
        with torch.no_grad():
            quantized = torch.sigmoid(served(dense, kjt)).squeeze(1)
        assert 0 < (quantized - fp32).abs().max() < 0.05  # really quantized, and close
        assert abs(binary_metrics(quantized.numpy(), labels.numpy())["auc"] - base) <= tolerance
