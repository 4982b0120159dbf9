"""``to_mlet`` / ``fold_model`` on models shaped like the CTR models users have.

DeepFM (a ``ModuleDict`` of ``nn.Embedding`` plus width-1 linear terms),
DCN-v2 (multi-hot ``nn.EmbeddingBag`` fields, a cross network) and a two-tower
retrieval model (``padding_idx``, mean bags). Each is converted, trained with
sparse SGD and with Adagrad (the optimizer created after ``to_mlet``), folded,
and must predict as before folding, with stock module classes, options and
state-dict keys.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from dlrm_mlet import MLETEmbedding, MLETEmbeddingBag, MLETError, fold_model, fold_state_dict, to_mlet

VOCAB = (50, 200, 13, 400, 7)
D = 8
K = 32


class DeepFM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embeddings = nn.ModuleDict({f"f{i}": nn.Embedding(n, D, sparse=True) for i, n in enumerate(VOCAB)})
        self.linear = nn.ModuleDict({f"f{i}": nn.Embedding(n, 1, sparse=True) for i, n in enumerate(VOCAB)})
        self.dnn = nn.Sequential(nn.Linear(D * len(VOCAB), 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, x):
        e = torch.stack([self.embeddings[f"f{i}"](x[:, i]) for i in range(len(VOCAB))], dim=1)
        linear = sum(self.linear[f"f{i}"](x[:, i]) for i in range(len(VOCAB)))
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1, keepdim=True)
        return torch.sigmoid(linear + fm + self.dnn(e.flatten(1))).squeeze(1)


class DCNv2(nn.Module):
    """Multi-hot fields as sum bags, a two-layer cross network beside a deep one."""

    def __init__(self):
        super().__init__()
        self.fields = nn.ModuleList(nn.EmbeddingBag(n, D, mode="sum", sparse=True) for n in VOCAB)
        width = D * len(VOCAB)
        self.cross = nn.ModuleList(nn.Linear(width, width) for _ in range(2))
        self.deep = nn.Sequential(nn.Linear(width, 16), nn.ReLU())
        self.head = nn.Linear(width + 16, 1)

    def forward(self, bags):
        x0 = torch.cat([f(i, o) for f, (i, o) in zip(self.fields, bags)], dim=1)
        x = x0
        for layer in self.cross:
            x = x0 * layer(x) + x
        return torch.sigmoid(self.head(torch.cat([x, self.deep(x0)], dim=1))).squeeze(1)


class TwoTower(nn.Module):
    """User id (0 = unknown, a padding row) and a mean bag of watched items; an item tower."""

    def __init__(self):
        super().__init__()
        self.user = nn.Embedding(300, D, padding_idx=0)
        self.history = nn.EmbeddingBag(500, D, mode="mean", padding_idx=0)
        self.item = nn.Embedding(500, D, sparse=True)
        self.user_mlp = nn.Linear(2 * D, D)

    def forward(self, inputs):
        user, history, offsets, item = inputs
        u = self.user_mlp(torch.cat([self.user(user), self.history(history, offsets)], dim=1))
        return torch.sigmoid((u * self.item(item)).sum(1))


def deepfm_batch(g, size=64):
    return (torch.stack([torch.randint(0, n, (size,), generator=g) for n in VOCAB], dim=1),)


def dcn_batch(g, size=64):
    bags = []
    for n in VOCAB:
        lengths = torch.randint(0, 4, (size,), generator=g)  # empty bags too
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
        bags.append((torch.randint(0, n, (int(lengths.sum()),), generator=g), offsets))
    return (bags,)


def two_tower_batch(g, size=64):
    user = torch.randint(0, 300, (size,), generator=g)
    user[:8] = 0  # unknown users look up the padding row
    lengths = torch.randint(1, 5, (size,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)[:-1]])
    history = torch.randint(0, 500, (int(lengths.sum()),), generator=g)
    history[::3] = 0
    return ((user, history, offsets, torch.randint(0, 500, (size,), generator=g)),)


MODELS = {"deepfm": (DeepFM, deepfm_batch), "dcn_v2": (DCNv2, dcn_batch), "two_tower": (TwoTower, two_tower_batch)}


def embedding_options(model):
    """Class and options of every embedding module, by name: what must come back after folding."""
    keys = ("num_embeddings", "embedding_dim", "padding_idx", "sparse", "mode", "include_last_offset")
    return {name: (type(m), {k: getattr(m, k) for k in keys if hasattr(m, k)})
            for name, m in model.named_modules() if isinstance(m, (nn.Embedding, nn.EmbeddingBag))}


def train(model, make_batch, optimizer, steps=25):
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        inputs = make_batch(g)
        target = torch.randint(0, 2, (64,), generator=g).float()
        optimizer.zero_grad()
        nn.functional.binary_cross_entropy(model(*inputs), target).backward()
        optimizer.step()


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("name", list(MODELS))
def test_to_mlet_trains_and_folds_back_to_the_stock_model(name, optimizer):
    make_model, make_batch = MODELS[name]
    model = make_model()
    stock_keys, stock_options = list(model.state_dict()), embedding_options(model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert to_mlet(model, K) is model
    converted = [m for m in model.modules() if isinstance(m, (MLETEmbedding, MLETEmbeddingBag))]
    if name == "deepfm":  # the width-1 linear terms stay plain, and it says so
        assert len(converted) == len(VOCAB) and all(type(m) is nn.Embedding for m in model.linear.values())
        assert "left 5 embedding modules plain" in str(caught[0].message) and "linear.f0 (width 1" in str(caught[0].message)
    else:
        assert len(converted) == len(stock_options) and not caught
    # Create the optimizer after to_mlet: the k-wide tables are new parameters.
    opt = (torch.optim.SGD(model.parameters(), lr=0.5) if optimizer == "sgd"
           else torch.optim.Adagrad(model.parameters(), lr=0.05))
    before = [p.detach().clone() for m in converted for p in m.parameters()]
    train(model, make_batch, opt)
    assert any(not torch.equal(a, p) for a, p in zip(before, (p for m in converted for p in m.parameters())))
    probe = make_batch(torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = model(*probe)
        state = fold_state_dict(model.state_dict())
        assert fold_model(model) is model
        assert torch.allclose(model(*probe), expected, atol=1e-5)
    assert list(model.state_dict()) == stock_keys and embedding_options(model) == stock_options
    # The folded state dict also loads, strictly, into a freshly built stock model.
    stock = make_model()
    stock.load_state_dict(state, strict=True)
    with torch.no_grad():
        assert torch.allclose(stock(*probe), expected, atol=1e-5)


def test_the_padding_row_stays_zero_through_training_and_folding():
    model = to_mlet(TwoTower(), K)
    assert model.user.padding_idx == 0 and model.history.table.padding_idx == 0
    train(model, two_tower_batch, torch.optim.SGD(model.parameters(), lr=0.5))
    assert torch.count_nonzero(model.user.table.weight[0]) == 0
    fold_model(model)
    assert model.user.padding_idx == 0 and torch.count_nonzero(model.user.weight[0]) == 0


def test_sparse_tables_get_sparse_gradients_and_dense_ones_dense():
    model = to_mlet(TwoTower(), K)
    (inputs,) = two_tower_batch(torch.Generator().manual_seed(0))
    model(inputs).sum().backward()
    assert model.item.table.weight.grad.is_sparse and not model.user.table.weight.grad.is_sparse
    assert not model.item.proj.weight.grad.is_sparse


@pytest.mark.parametrize("target,converted", [
    (r"embeddings\.f[01]", {"embeddings.f0", "embeddings.f1"}),
    (["f3", "embeddings.f4"], {"embeddings.f3", "embeddings.f4"}),  # "f3" matches linear.f3 too: width 1
    (lambda name, module: module.num_embeddings > 100, {"embeddings.f1", "embeddings.f3"}),
])
def test_target_as_pattern_names_or_predicate(target, converted):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = to_mlet(DeepFM(), K, target=target)
    got = {n for n, m in model.named_modules() if isinstance(m, MLETEmbedding)}
    assert got == converted


def test_hidden_dim_per_module_by_mapping_or_callable_and_min_rows():
    with pytest.warns(UserWarning, match="embeddings.f0 .hidden_dim gives it no k"):
        model = to_mlet(DeepFM(), {"embeddings.f1": 64, "embeddings.f3": 16, "linear.f3": 16})
    assert model.embeddings.f1.hidden_dim == 64 and model.embeddings.f3.hidden_dim == 16
    assert isinstance(model.linear.f3, MLETEmbedding)  # width 1, but named explicitly
    assert type(model.embeddings.f0) is nn.Embedding
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = to_mlet(DeepFM(), lambda name, m: 4 * m.num_embeddings if m.embedding_dim > 1 else 0,
                        min_rows=20)
    assert model.embeddings.f3.hidden_dim == 1600 and type(model.embeddings.f2) is nn.Embedding


def test_modules_that_cannot_fold_exactly_are_left_alone_and_named():
    model = nn.ModuleDict({"max": nn.EmbeddingBag(10, 4, mode="max"), "norm": nn.Embedding(10, 4, max_norm=1.0),
                           "ok": nn.Embedding(10, 4)})
    with pytest.warns(UserWarning, match=r"max \(mode='max'.*norm \(max_norm"):
        to_mlet(model, 16)
    assert isinstance(model["ok"], MLETEmbedding) and type(model["max"]) is nn.EmbeddingBag


@pytest.mark.parametrize("call,message", [
    (lambda: to_mlet(nn.Linear(3, 3), 16), "no nn.Embedding or nn.EmbeddingBag"),
    (lambda: to_mlet(DeepFM(), 16, target=["nope"]), "target names no embedding module called 'nope'"),
    (lambda: to_mlet(DeepFM(), {"embeddings.f9": 16}), "hidden_dim names no embedding module called"),
    (lambda: to_mlet(DeepFM(), 4), r"hidden_dim 4 for 'embeddings.f0' is below its embedding_dim 8"),
    (lambda: to_mlet(DeepFM(), 16, proj_init="bogus"), "unknown projection init"),
    (lambda: to_mlet(nn.ModuleDict({"w": nn.Embedding(5, 1)}), 16), r"nothing to convert.*w \(width 1"),
    (lambda: to_mlet(DeepFM(), "abc"), r"to_mlet: hidden_dim: expected an integer >= 1, got 'abc'"),
    (lambda: to_mlet(DeepFM(), 64.5), r"to_mlet: hidden_dim: expected an integer >= 1, got 64.5"),
    (lambda: to_mlet(DeepFM(), -5), r"to_mlet: hidden_dim: expected an integer >= 1, got -5"),
    (lambda: to_mlet(DeepFM(), {"embeddings.f0": 2.5}), r"hidden_dim of 'embeddings.f0': expected an integer"),
    (lambda: to_mlet(DeepFM(), 16, init="warm"), r"init must be 'mlet' .* or 'keep'"),
])
def test_bad_requests_are_refused_in_one_line(call, message):
    with pytest.raises(MLETError, match=message):
        call()


def test_a_shared_module_becomes_one_shared_mlet_module():
    shared = nn.Embedding(30, 4)
    model = nn.ModuleDict({"a": shared, "b": shared})
    to_mlet(model, 16)
    assert model["a"] is model["b"] and isinstance(model["a"], MLETEmbedding)
    fold_model(model)
    assert model["a"] is model["b"] and type(model["a"]) is nn.Embedding


def test_device_and_dtype_follow_the_original_and_a_bare_module_is_returned():
    table = nn.Embedding(20, 4, dtype=torch.float64)
    mlet = to_mlet(table, 16)
    assert isinstance(mlet, MLETEmbedding) and mlet.table.weight.dtype == torch.float64
    assert fold_model(mlet).weight.dtype == torch.float64


def test_fold_model_is_all_or_nothing():
    model = to_mlet(DCNv2(), K)
    with torch.no_grad():
        model.fields[3].table.weight[17, 2] = float("nan")
    with pytest.raises(MLETError, match=r"^fields\.3: folded row 17"):
        fold_model(model)
    assert all(isinstance(f, MLETEmbeddingBag) for f in model.fields)


def test_same_seed_same_model():
    models = []
    for _ in range(2):
        np.random.seed(3)  # MLET tables draw from numpy's global RNG, as DLRM's do
        torch.manual_seed(3)  # the model's own layers from torch's
        models.append(to_mlet(DCNv2(), K))
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["sum", "mean"])
def test_bag_options_padding_and_include_last_offset_fold_exactly(mode):
    bag = MLETEmbeddingBag(40, 4, 16, mode=mode, padding_idx=3, include_last_offset=True, sparse=False)
    indices = torch.tensor([3, 5, 3, 7, 9, 3, 1])
    offsets = torch.tensor([0, 2, 2, 6, 7])  # include_last_offset: 4 bags, one empty, one all padding-free
    plain = bag.fold()
    assert plain.padding_idx == 3 and plain.include_last_offset and plain.mode == mode
    assert torch.allclose(plain(indices, offsets), bag(indices, offsets), atol=1e-6)
    assert torch.count_nonzero(bag.table.weight[3]) == 0


def test_fold_model_folds_an_unsharded_torchrec_model_like_fold_torchrec():
    pytest.importorskip("torchrec")
    from torchrec import EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor

    from dlrm_mlet.torchrec import fold_torchrec_state_dict, mlet_dlrm

    configs = [EmbeddingBagConfig(name=f"t{i}", embedding_dim=D, num_embeddings=n, feature_names=[f"f{i}"])
               for i, n in enumerate((30, 70))]
    model = mlet_dlrm(configs, K, 4, [16, D], [16, 1])
    kjt = KeyedJaggedTensor.from_lengths_sync(keys=["f0", "f1"], values=torch.tensor([1, 29, 0, 5, 69, 3]),
                                              lengths=torch.tensor([2, 1, 0, 2, 1, 0]))
    dense = torch.randn(3, 4)
    with torch.no_grad():
        expected, state = model(dense, kjt), fold_torchrec_state_dict(model)
        assert fold_model(model) is model
        assert type(model.sparse_arch.embedding_bag_collection) is EmbeddingBagCollection
        assert torch.allclose(model(dense, kjt), expected, atol=1e-6)
    assert list(model.state_dict()) == list(state)


@pytest.mark.parametrize("kind", [nn.Embedding, nn.EmbeddingBag])
def test_init_keep_folds_to_the_trained_weights_at_step_0_and_training_then_moves_them(kind):
    torch.manual_seed(0)
    table = kind(40, 6, padding_idx=3) if kind is nn.Embedding else kind(40, 6, mode="sum")
    with torch.no_grad():
        table.weight.mul_(0.05).add_(0.3)  # "trained": nothing like torch's N(0, 1) init
    trained = table.weight.detach().clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # keep: no warning about replaced weights
        mlet = to_mlet(nn.ModuleDict({"t": table}), 64, init="keep")["t"]
    assert torch.allclose(mlet.folded_weight(), trained, atol=1e-6)
    proj = mlet.proj.weight.detach()
    assert torch.allclose(proj @ proj.T, torch.eye(6), atol=1e-6)  # orthonormal rows: SGD steps as a plain row's
    opt = torch.optim.SGD(mlet.parameters(), lr=0.1)
    args = (torch.tensor([1, 2, 5]),) if kind is nn.Embedding else (torch.tensor([1, 2, 5]), torch.tensor([0, 1]))
    mlet(*args).sum().backward()
    opt.step()
    moved = fold_model(nn.ModuleDict({"t": mlet}))["t"].weight
    assert not torch.allclose(moved, trained)  # training moves it on from there


def _trained(table, steps=300):
    """``table`` (xavier-initialised) after SGD on skewed lookups (Zipf-like, as real features are) with a
    learnable signal."""
    nn.init.xavier_uniform_(table.weight)
    head = nn.Linear(table.embedding_dim, 1)
    opt = torch.optim.SGD([*table.parameters(), *head.parameters()], lr=0.5)
    truth = torch.randn(table.num_embeddings)
    for _ in range(steps):
        ids = (torch.exp(torch.rand(256) * math.log(table.num_embeddings + 1.0)) - 1).long()
        ids = ids.clamp(max=table.num_embeddings - 1)
        loss = nn.functional.binary_cross_entropy_with_logits(head(table(ids)).squeeze(1), (truth[ids] > 0).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return table


def test_converting_trained_weights_without_keep_says_they_are_replaced_and_fresh_inits_are_quiet():
    """Freshly built models use many inits (torch's N(0, 1), xavier, kaiming, small uniform, truncated normal:
    torchfm, DeepCTR, TorchRec): none warns; a table trained on skewed lookups does."""
    inits = {"torch": lambda w: None, "xavier_u": nn.init.xavier_uniform_, "xavier_n": nn.init.xavier_normal_,
             "kaiming": nn.init.kaiming_uniform_, "uniform": lambda w: nn.init.uniform_(w, -0.05, 0.05),
             "trunc": lambda w: nn.init.trunc_normal_(w, std=0.02)}
    model = nn.ModuleDict({name: nn.Embedding(2000, 16) for name in inits})
    for name, init in inits.items():
        init(model[name].weight)
    model["trained"] = _trained(nn.Embedding(2000, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning about the fresh ones
        to_mlet(nn.ModuleDict({k: v for k, v in model.items() if k != "trained"}), 32)
    with pytest.warns(UserWarning, match=r"replaced the weights of trained by the MLET init; pass init='keep'") as caught:
        to_mlet(nn.ModuleDict({"fresh": nn.Embedding(500, 8), "trained": model["trained"]}), 32)
    assert "fresh" not in str(caught[0].message)


def test_an_optimizer_built_before_to_mlet_is_refused_by_attach():
    import dlrm_mlet

    model = nn.ModuleDict({"t": nn.Embedding(50, 4)})
    early = torch.optim.SGD(model.parameters(), lr=0.1)
    to_mlet(model, 16)
    with pytest.raises(MLETError, match=r"holds a \(50, 4\) parameter that is no longer in the model.*after to_mlet"):
        dlrm_mlet.attach(early)
    dlrm_mlet.attach(torch.optim.SGD(model.parameters(), lr=0.1)).remove()



def test_a_target_that_matches_nothing_names_itself_and_the_names_there_are():
    model = nn.ModuleDict({"users": nn.Embedding(50, 4), "ads": nn.Embedding(60, 4)})
    with pytest.raises(MLETError, match=r"target 'user' matches no embedding module's full name \(they are: "
                                        r"'users', 'ads'\)"):
        to_mlet(model, 16, target=r"user")  # a regular expression must match the whole name
    assert to_mlet(model, 16, target=r"users")["users"].hidden_dim == 16
