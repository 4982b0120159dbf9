"""``to_mlet``: MLET for any PyTorch model, and ``fold_model`` back to a plain one.

The counterpart of PEFT's ``get_peft_model`` / ``merge_and_unload`` for
embeddings: one call swaps a model's ``nn.Embedding`` and ``nn.EmbeddingBag``
modules for their two-layer MLET forms in place, training then runs as usual
(create the optimizer after the call: the tables are new parameters;
``dlrm_mlet.attach(optimizer)`` then checks it can train them and applies
half tables' updates through its own hook, with no process-wide one), and
``fold_model`` puts plain modules of the original classes and options back, so
the trained model's state dict and module types are the stock ones again.

What is left alone, and why (``to_mlet`` says so in one warning):

* width-1 embeddings (``embedding_dim < 2``): the "linear" terms of FM-style
  models, a per-value bias, not a representation MLET could widen (convert one
  anyway by giving it a ``k`` by name through a mapping or callable ``hidden_dim``);
* ``mode="max"`` bags, ``max_norm`` and ``scale_grad_by_freq``: none of them
  is linear in the table, so no folded table would give the same outputs;
* subclasses of ``nn.Embedding``/``nn.EmbeddingBag``: their ``forward`` may do
  more than a lookup;
* tables with fewer than ``min_rows`` rows, or that ``target`` / ``hidden_dim``
  do not select.
"""

import math
import re
import warnings
from typing import Callable, List, Sequence, Union

import numpy as np
import torch
from torch import nn

from ..errors import MLETError
from . import half, step
from .bag import MLETEmbeddingBag
from .embedding import MLETEmbedding
from .options import HiddenDim, hidden_dims, parse_proj_init
from .pair import TwoLayer

# which modules: a regular expression on the full name, a list of names, or (name, module) -> bool
Target = Union[str, Sequence[str], Callable[[str, nn.Module], bool], None]

_KINDS: List[type] = [TwoLayer]  # MLETEmbeddingBag, MLETEmbedding; integrations add theirs (register_kind)


def _places(model, kinds):
    """``(name, module)`` for every place a module of ``kinds`` sits, shared ones at each place."""
    return [(name, module) for name, module in model.named_modules(remove_duplicate=False)
            if isinstance(module, kinds)]


def _replace(model, places, new):
    """Put ``new[id(module)]`` at every place; a bare module is returned as its replacement."""
    for name, module in places:
        if name == "":
            return new[id(module)]
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, new[id(module)])
    return model


def _selector(target, names):
    """``target`` as a predicate ``(name, module) -> bool``; names it lists must exist."""
    if target is None:
        return lambda name, module: True
    if isinstance(target, str):
        pattern = re.compile(target)
        if not any(pattern.fullmatch(n) for n in names):
            raise MLETError(f"to_mlet: target {target!r} matches no embedding module's full name (they are: "
                            f"{', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''})")
        return lambda name, module: pattern.fullmatch(name) is not None
    if callable(target):
        return target
    wanted = list(target)
    missing = [t for t in wanted if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise MLETError(f"to_mlet: target names no embedding module called {', '.join(map(repr, missing))}")
    return lambda name, module: any(name == t or name.endswith("." + t) for t in wanted)


def _why_plain(module, k, explicit, min_rows):
    """Why ``module`` stays plain, or None when it can become MLET."""
    if type(module) not in (nn.Embedding, nn.EmbeddingBag):
        return f"a subclass ({type(module).__name__}) whose forward may be more than a lookup"
    if isinstance(module, nn.EmbeddingBag) and module.mode == "max":
        return "mode='max' is not linear, so it cannot be folded"
    if module.max_norm is not None or module.scale_grad_by_freq:
        return "max_norm / scale_grad_by_freq have no folded equivalent"
    if not k:
        return "hidden_dim gives it no k"
    if module.embedding_dim < 2 and not explicit:
        return "width 1 (a linear term)"
    if module.num_embeddings < min_rows:
        return f"fewer than min_rows={min_rows} rows"
    return None


def _mlet_form(module, k, proj_init, name, table_dtype, keep):
    if k < module.embedding_dim:
        raise MLETError(f"to_mlet: hidden_dim {k} for {name!r} is below its embedding_dim "
                        f"{module.embedding_dim}; MLET needs k >> d")
    weight = module.weight
    dtype = weight.dtype if table_dtype is None else half.table_dtype(table_dtype)
    if isinstance(module, nn.EmbeddingBag):
        mlet = MLETEmbeddingBag(module.num_embeddings, module.embedding_dim, k, mode=module.mode,
                                sparse=module.sparse, proj_init=proj_init, padding_idx=module.padding_idx,
                                include_last_offset=module.include_last_offset, table_dtype=dtype)
    else:
        mlet = MLETEmbedding(module.num_embeddings, module.embedding_dim, k, padding_idx=module.padding_idx,
                             sparse=module.sparse, proj_init=proj_init, table_dtype=dtype)
    mlet.proj.to(dtype=weight.dtype)  # the projection computes in the model's own dtype
    mlet = mlet.to(device=weight.device)
    if keep:
        keep_weights(mlet, weight)
    return mlet


def keep_weights(mlet: TwoLayer, weight: torch.Tensor) -> TwoLayer:
    """Set ``mlet`` so that it folds to ``weight`` (n x d) exactly: a warm start from a trained table.

    The projection gets orthonormal rows (``B B^T = I``, drawn from numpy's
    global RNG) and the table is ``W B``, so ``table @ proj.T = W B B^T = W``.
    With ``B B^T = I`` an SGD step moves a folded row as far as it would move
    the plain row: the learning rate the model was trained with still applies.
    """
    d, k = mlet.proj.weight.shape
    q, r = np.linalg.qr(np.random.normal(size=(k, d)))
    basis = torch.from_numpy(q * np.sign(np.diag(r))).to(weight.device, torch.float64)  # k x d, orthonormal columns
    with torch.no_grad():
        mlet.proj.weight.copy_(basis.T.to(mlet.proj.weight.dtype))
        mlet.table.weight.copy_((weight.detach().to(torch.float64) @ basis.T).to(mlet.table.weight.dtype))
    return mlet


def _fresh(module):
    """Whether the weights could be what an init produced, so nothing trained is lost.

    An init draws every value alone from one symmetric law (torch's N(0, 1),
    xavier, kaiming, uniform, truncated normal: any scale), so: a mean within
    five standard errors of 0, a kurtosis between the uniform's (1.8) and the
    normal's (3), and rows alike (their mean squares vary no more than
    independent values allow, within five standard errors). Training moves the
    rows of frequent values and leaves rare ones: rows then differ far beyond
    that (the padding row, zero by construction, left out).
    """
    w = module.weight.detach().double()
    if module.padding_idx is not None:
        w = torch.cat([w[:module.padding_idx], w[module.padding_idx + 1:]])
    n, rows = w.numel(), w.shape[0]
    std = float(w.std()) if n > 1 else 0.0
    if std == 0.0:
        return True  # one value everywhere: nothing learned
    mean = float(w.mean())
    kurtosis = float((((w - mean) / std) ** 4).mean())
    squares = w.pow(2)
    spread = float(squares.mean(dim=1).var()) / (float(squares.var()) / w.shape[1]) if rows > 2 else 1.0
    return (abs(mean) < 5 * std / math.sqrt(n) and 1.8 - 15 / math.sqrt(n) <= kurtosis <= 3 + 5 * math.sqrt(24 / n)
            and spread < 1 + 5 * math.sqrt(2 / max(rows - 1, 1)))


def to_mlet(model: nn.Module, hidden_dim: HiddenDim[nn.Module], *, target: Target = None, min_rows: int = 0,
            proj_init: str = "normal", table_dtype: half.TableDtype = None,
            init: str = "mlet") -> nn.Module:
    """Replace, in place, each ``nn.Embedding`` / ``nn.EmbeddingBag`` of ``model`` by its MLET form.

    ``hidden_dim``: one ``k`` for all, a mapping ``{module name: k}``, a list in
    the order of ``model.named_modules()``, or a callable ``(name, module) -> k``
    (0 or None keeps a module plain).
    ``target``: which modules to consider: a regular expression the full module
    name must match, a list of names (a name also matches as a dotted suffix), or a
    predicate ``(name, module) -> bool``. ``proj_init`` as in ``MLETEmbeddingBag``.
    ``table_dtype`` (``"fp16"``, ``"bf16"``, ``"fp32"`` or a torch dtype; None:
    the module's own) stores the k-wide tables so; the projections keep the
    module's dtype. Half tables are updated with stochastic rounding at the
    step of the optimizer holding them: SGD, Adagrad or DLRM's RWSAdagrad (``half.py``).
    ``init="mlet"`` (default): the MLET authors' init, new tables drawn from
    numpy's global RNG (as DLRM's are: seed with ``np.random.seed``) on the
    original module's device and dtype; the module's own weights are dropped
    (a warning names the modules whose weights could not come from an init:
    ``_fresh``). ``init="keep"``: a warm start, each MLET module folding to
    the original weights exactly at step 0 (``keep_weights``), so a trained
    model can be fine-tuned with MLET.
    Build the optimizer after ``to_mlet``: one built before holds the replaced
    weights, which are no longer in the model (``dlrm_mlet.attach(optimizer)``
    refuses such an optimizer).
    Returns ``model`` (the new module when ``model`` itself is an embedding).
    Raises ``MLETError`` when nothing could be converted or a name given does not exist.
    """
    if init not in ("mlet", "keep"):
        raise MLETError(f"to_mlet: init must be 'mlet' (the MLET authors' init) or 'keep' (start from the "
                        f"module's weights), got {init!r}")
    parse_proj_init(proj_init)
    if table_dtype is not None:
        half.table_dtype(table_dtype)
    places = _places(model, (nn.Embedding, nn.EmbeddingBag))
    names = [name for name, _ in places]
    selected = _selector(target, names)
    k_of = hidden_dims(hidden_dim, names, "to_mlet: hidden_dim", "embedding module")
    new, plain = {}, {}
    for name, module in places:
        if id(module) in new or id(module) in plain or not selected(name, module):
            continue
        k, explicit = k_of(name, module)
        why = _why_plain(module, k, explicit, min_rows)
        if why:
            plain[id(module)] = f"{name or type(module).__name__} ({why})"
        else:
            new[id(module)] = _mlet_form(module, k, proj_init, name, table_dtype, init == "keep")
    if not new:
        found = f"{len(places)} embedding modules" if places else "no nn.Embedding or nn.EmbeddingBag"
        left = f"; left plain: {', '.join(plain.values())}" if plain else ""
        raise MLETError(f"to_mlet: nothing to convert in {type(model).__name__} ({found}{left})")
    if plain:
        warnings.warn(f"to_mlet left {len(plain)} embedding modules plain: {', '.join(plain.values())}",
                      stacklevel=2)
    converted = [(n, m) for n, m in places if id(m) in new]
    trained = [n or type(m).__name__ for n, m in converted if not _fresh(m)]
    if trained and init != "keep":
        warnings.warn(f"to_mlet replaced the weights of {', '.join(trained)} by the MLET init; pass init='keep' "
                      "to start from them (the folded tables then equal them at step 0)", stacklevel=2)
    for _, m in converted:
        step.replaced(m.weight, "to_mlet replaced it; build the optimizer after to_mlet")
    return _replace(model, converted, new)


def register_kind(cls: type) -> type:
    """Let ``fold_model`` fold ``cls`` too: an MLET module class with a ``fold()`` returning its plain form.

    The TorchRec collection registers itself when imported, so core never imports TorchRec.
    """
    if cls not in _KINDS:
        _KINDS.append(cls)
    return cls


def fold_model(model: nn.Module) -> nn.Module:
    """Fold every MLET module of ``model`` back into its plain class, in place; returns the model.

    ``MLETEmbeddingBag`` becomes ``nn.EmbeddingBag``, ``MLETEmbedding``
    ``nn.Embedding``, with the original options (mode, sparse, padding_idx), and
    an unsharded ``MLETEmbeddingBagCollection`` a plain ``EmbeddingBagCollection``
    (sharded models: ``dlrm_mlet.torchrec.fold_torchrec_state_dict``).
    All tables are folded (and checked finite) before any is swapped, so an
    error leaves the model exactly as it was. A model with no MLET module is
    returned unchanged; an MLET module itself is returned folded.
    """
    places = _places(model, tuple(_KINDS))
    outer = [name for name, _ in places]
    places = [(name, m) for name, m in places  # a module inside another MLET module folds with it
              if not any(name.startswith(o + ".") for o in outer if o != name and o != "")
              and not (name and "" in outer)]
    folded = {}
    for name, module in places:
        if id(module) not in folded:
            folded[id(module)] = module.fold(name or None)
    return _replace(model, places, folded)
