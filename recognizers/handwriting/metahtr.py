"""MetaHTR: writer adaptation by learned gradient steps on a few labelled words (writer-htr.md §6, §7).

Bhunia et al., "MetaHTR: Towards Writer-Adaptive Handwritten Text Recognition" (CVPR 2021,
arXiv 2104.01876), as reproduced by van der Werff et al. (arXiv 2307.15071); the design follows
writer-htr.md §7.2 (``torch.func.functional_call`` inner/outer loop), not the thesis's learn2learn code.

The state is small and lives beside the base :class:`~.model.HTRModel`, never inside it, so the base
weights are saved and exported once:

* :class:`InnerLearningRates`: one learnable rate α_k per adapted parameter tensor (a weight and its bias
  get separate rates), stored as log α so α = exp(log α) stays positive (§7.3; the thesis used raw α);
* :class:`InstanceWeightNet`: g_γ, Linear(2·V·D → 8) → ReLU → Linear(8 → 8) → ReLU → Linear(8 → 1) →
  Sigmoid, weighting each support character by its classifier gradient and the mean one;
* :class:`MetaHTR` ties them to a model: :meth:`MetaHTR.adapt` (inner loop), :meth:`MetaHTR.outer_loss`
  (one task's query loss after adaptation) and :meth:`MetaHTR.writer_profile` (a saved adaptation).

The maths is in pure functions: :func:`classifier_gradients` (closed form), :func:`support_loss`,
:func:`query_loss`, :func:`inner_adapt` and :func:`decode_with` (greedy decoding with given parameters).

Legend (paper symbols; B words, T steps, N non-pad characters, V classes, D classifier inputs):

* θ: the adapted base parameters (``params``: name → tensor); θ': after the inner loop ("fast weights").
* α_k: inner learning rate of tensor k; θ'_k = θ_k − α_k ∇θ_k L_inner per inner step.
* φ = W_clf `(V, D)`: the final classifier; z_n `(V,)` logits, h_n `(D,)` its input, y_n the target.
* G[n] = ∂ℓ_n/∂W_clf = (softmax(z_n) − q_n) h_nᵀ `(V, D)`, q_n the one-hot (or label-smoothed) target.
* w_n = g_γ([G[n]; mean_n' G[n']]) ∈ (0, 1): the instance weight of character n.
* ℓ_n: cross-entropy of character n. L_inner = Σ_n w_n ℓ_n / B with weights (divided by **words**, the
  thesis's normalisation), else mean_n ℓ_n. L_outer = mean CE of the query words under θ'.

Modes: second order by default (``create_graph=True``: the outer gradient reaches θ through the inner
gradient, α and γ); first order treats the inner gradient as a constant, so γ would get no gradient:
:class:`MetaHTRConfig` refuses instance weights with first order (§7.3). The inner loop always runs with
dropout off and BatchNorm on its running statistics (the model in eval mode, restored afterwards). SAR's
LSTM has no cuDNN double backward (pytorch#5261), so cuDNN is switched off around every forward pass of a
model with LSTMs on CUDA.

Writer profiles (:class:`~.metahtr_profile.MetaHTRProfile`) store θ' − θ of the tensors that moved.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from data.handwriting import CharVocabulary, collate_images

from .metahtr_profile import MetaHTRProfile, weights_digest
from .model import HTRModel
from .search import decode, encode_images, search_options

__all__ = [
    "InnerLearningRates",
    "InstanceWeightNet",
    "MetaHTR",
    "MetaHTRConfig",
    "WordBatch",
    "adapted_names",
    "classifier_gradients",
    "decode_with",
    "forward_with",
    "inner_adapt",
    "query_loss",
    "support_loss",
]

Params = dict[str, Tensor]


@dataclass(frozen=True)
class MetaHTRConfig:
    """Meta-learning settings (writer-htr.md §7.1, §11). The variants of the thesis's run names:
    MAML = ``learn_inner_lr=False, instance_weights=False, initial_inner_lr=1e-3``; MAMLmSGD =
    ``instance_weights=False``; MetaHTR = the defaults."""

    num_inner_steps: int = 1  # n, in training and evaluation (the paper: one step)
    initial_inner_lr: float = 1e-4  # α_k at the start (thesis CLI default and paper runs)
    learn_inner_lr: bool = True  # False: α stays fixed (plain MAML)
    instance_weights: bool = True  # g_γ weights the support characters (MetaHTR); False: plain mean CE
    first_order: bool = False  # True: the inner gradient is a constant in the outer backward
    weight_hidden: int = 8  # hidden width of g_γ
    adapt: tuple[str, ...] = ()  # parameter-name prefixes that adapt; () = every parameter (the thesis)
    label_smoothing: float = 0.0  # of the inner loss; G then uses the smoothed target

    def __post_init__(self) -> None:
        if self.num_inner_steps < 1 or self.weight_hidden < 1:
            raise ValueError(f"num_inner_steps and weight_hidden must be >= 1 ({self})")
        if not self.initial_inner_lr > 0:
            raise ValueError(f"initial_inner_lr must be > 0, got {self.initial_inner_lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.first_order and self.instance_weights:
            raise ValueError("instance weights need second order: with first_order=True the inner gradient "
                             "is a constant, so g_γ never receives a gradient (writer-htr.md §7.3); set "
                             "instance_weights=False (MAML / MAMLmSGD) or first_order=False")
        object.__setattr__(self, "adapt", tuple(self.adapt))  # a YAML list arrives as a list

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MetaHTRConfig:
        return cls(**dict(data or {}))


@dataclass(frozen=True)
class WordBatch:
    """A padded batch of word images with teacher-forcing tensors (one support or query set).

    Attributes:
        images: `(B, 1, H, W)` normalised, padded with the background (``collate_images``).
        mask: `(B, H, W)` True on padding.
        inputs: `(B, T)` decoder inputs ``[<sos>] + targets[:-1]``.
        targets: `(B, T)` character ids, ``<eos>``, then ``<pad>``.
    """

    images: Tensor
    mask: Tensor
    inputs: Tensor
    targets: Tensor

    @classmethod
    def from_words(cls, images: Sequence[Tensor], texts: Sequence[str], vocab: CharVocabulary) -> WordBatch:
        """Args: B normalised images `(1, H_b, W_b)` (on the model's device) and their texts.

        Raises:
            VocabularyError: a text holds characters outside ``vocab``.
        """
        pixels, mask = collate_images(images)
        batch = vocab.targets(texts)
        return cls(pixels, mask, batch.inputs.to(pixels.device), batch.targets.to(pixels.device))

    def __len__(self) -> int:
        return self.images.shape[0]


def adapted_names(model: nn.Module, prefixes: Sequence[str] = ()) -> list[str]:
    """Names of the trainable parameters that adapt: all, or those starting with one of ``prefixes``."""
    prefixes = tuple(prefixes)
    names = [n for n, p in model.named_parameters()
             if p.requires_grad and (not prefixes or n.startswith(prefixes))]
    if not names:
        raise ValueError(f"no trainable parameter matches the adapt prefixes {tuple(prefixes)}")
    return names


class InnerLearningRates(nn.Module):
    """α_k = exp(s_k) > 0, one per adapted tensor (``ParameterDict`` keys cannot hold dots: ``.`` → ``__``).

    Args:
        names: the adapted parameter names.
        initial: α at the start.
        learnable: False keeps α fixed (MAML).
    """

    def __init__(self, names: Sequence[str], initial: float = 1e-4, learnable: bool = True) -> None:
        super().__init__()
        self.names = tuple(names)
        self.log_lr = nn.ParameterDict({n.replace(".", "__"): nn.Parameter(torch.tensor(math.log(initial)),
                                                                          requires_grad=learnable)
                                        for n in self.names})

    def forward(self) -> Params:
        """The rates: name → 0-d tensor α_k."""
        return {n: self.log_lr[n.replace(".", "__")].exp() for n in self.names}


class InstanceWeightNet(nn.Module):
    """g_γ: per-character weights from the classifier gradients (writer-htr.md §7.1).

    Args:
        vocab_size: V.
        feature_dim: D, the classifier's input width (``HTRConfig.feature_dim``).
        hidden: width of both hidden layers (8 in the thesis).
    """

    def __init__(self, vocab_size: int, feature_dim: int, hidden: int = 8) -> None:
        super().__init__()
        self.size = vocab_size * feature_dim
        self.first = nn.Linear(2 * self.size, hidden)
        self.rest = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1),
                                  nn.Sigmoid())

    def forward(self, grads: Tensor) -> Tensor:
        """Args: grads G `(N, V, D)`. Returns w `(N,)` in (0, 1).

        The first layer on ``[G[n]; mean G]`` is split into its two halves, so the `(N, 2·V·D)` input is
        never materialised (the same numbers as ``Linear(cat(...))``).
        """
        flat = grads.flatten(1)  # (N, V·D)
        mean = flat.mean(0, keepdim=True)  # (1, V·D)
        weight, bias = self.first.weight, self.first.bias
        hidden = F.linear(flat, weight[:, : self.size])  # (N, hidden)
        hidden = hidden + F.linear(mean, weight[:, self.size:], bias)  # + (1, hidden)
        return self.rest(hidden).squeeze(1)  # (N,)


def classifier_gradients(logits: Tensor, h: Tensor, targets: Tensor, label_smoothing: float = 0.0) -> Tensor:
    """Closed-form per-character gradient of the cross-entropy w.r.t. the classifier weight.

    For z = W h + b and ℓ = CE(z, q): ∂ℓ/∂W = (softmax(z) − q) hᵀ, exact, one outer product instead of N
    ``autograd.grad`` calls, and still differentiable in θ through z and h (second order is kept).

    Args:
        logits: z `(N, V)`; h: `(N, D)`; targets: y `(N,)` ids (no padding rows).
        label_smoothing: ε of ``F.cross_entropy``; q = (1 − ε)·onehot(y) + ε/V.

    Returns:
        G `(N, V, D)`.
    """
    vocab = logits.shape[-1]
    q = F.one_hot(targets, vocab).to(logits.dtype)  # (N, V)
    if label_smoothing:
        q = q * (1 - label_smoothing) + label_smoothing / vocab
    return (logits.softmax(-1) - q)[:, :, None] * h[:, None, :]  # (N, V, D)


def support_loss(logits: Tensor, h: Tensor, targets: Tensor, pad_id: int,
                 weight_net: InstanceWeightNet | None = None, label_smoothing: float = 0.0) -> Tensor:
    """L_inner: Σ w_n ℓ_n / B with instance weights, else the mean CE over the N non-pad characters.

    Args:
        logits: `(B, T, V)`; h: `(B, T, D)`; targets: `(B, T)`.
        weight_net: g_γ, or None. G stays attached, so the loss's θ-gradient includes w_n's dependence on
            θ (the thesis differentiates through its per-character gradients the same way).
    """
    real = targets != pad_id  # (B, T)
    z, y = logits[real], targets[real]  # (N, V), (N,)
    ce = F.cross_entropy(z, y, reduction="none", label_smoothing=label_smoothing)  # (N,)
    if weight_net is None:
        return ce.mean()
    grads = classifier_gradients(z, h[real], y, label_smoothing)  # (N, V, D)
    weights = weight_net(grads)  # (N,)
    return (weights * ce).sum() / targets.shape[0]


def query_loss(logits: Tensor, targets: Tensor, pad_id: int) -> Tensor:
    """L_outer: mean teacher-forced CE over non-pad characters. Args: logits `(B, T, V)`, targets `(B, T)`."""
    return F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id)


@contextlib.contextmanager
def _modes(model: nn.Module, dropout: bool = False) -> Iterator[None]:
    """Eval mode (BatchNorm on running statistics); with ``dropout``, Dropout and LSTM layers train.
    Every module's previous mode is restored afterwards."""
    before = {m: m.training for m in model.modules()}
    model.eval()
    if dropout:
        for m in model.modules():
            if isinstance(m, nn.Dropout | nn.RNNBase):
                m.train()
    try:
        yield
    finally:
        for m, mode in before.items():
            m.training = mode


@contextlib.contextmanager
def _no_cudnn_rnn(model: nn.Module, device: torch.device) -> Iterator[None]:
    """cuDNN off for models with LSTMs on CUDA: no cuDNN RNN double backward, nor backward in eval mode."""
    needed = device.type == "cuda" and any(isinstance(m, nn.RNNBase) for m in model.modules())
    previous = torch.backends.cudnn.enabled
    if needed:
        torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = previous


def forward_with(model: HTRModel, params: Mapping[str, Tensor], batch: WordBatch) -> tuple[Tensor, Tensor]:
    """Teacher forcing with ``params`` replacing the module's own (the others are the module's).

    Returns:
        logits `(B, T, V)` and h `(B, T, D)`.
    """
    args = (batch.images, batch.mask, batch.inputs)
    return functional_call(model, dict(params), args, {"return_features": True})


def inner_adapt(model: HTRModel, params: Mapping[str, Tensor], support: WordBatch,
                lrs: Mapping[str, Tensor], *, weight_net: InstanceWeightNet | None = None,
                num_steps: int = 1, create_graph: bool = True, label_smoothing: float = 0.0) -> Params:
    """The inner loop: ``num_steps`` SGD steps θ_k ← θ_k − α_k ∇θ_k L_inner on the support set.

    Runs in eval mode (dropout off, BatchNorm on running statistics) whatever the model's mode.

    Args:
        model: the base network (its parameters outside ``params`` stay as they are).
        params: θ, name → tensor, each requiring grad (module parameters or outputs of earlier steps).
        support: the writer's support words.
        lrs: α, name → 0-d tensor, for every key of ``params``.
        weight_net: g_γ for L_inner = Σ w·ℓ / words; None for the mean CE.
        num_steps: n.
        create_graph: second order (True) or first order (False: the inner gradient is a constant in
            the outer backward). Both give the same θ': ∇θ L_inner is always the full gradient, through
            w_n's dependence on θ (via G) too. Deliberate deviation from §7.3's "detach G in first-order
            mode": that would make θ' of the first-order evaluation differ from the second-order training.
        label_smoothing: of the inner loss.

    Returns:
        θ', name → tensor; a tensor that gets no gradient is returned unchanged.

    Raises:
        RuntimeError: gradients are disabled (e.g. Lightning's inference mode; writer-htr.md §16.6).
        ValueError: a tensor of ``params`` does not require grad, or has no learning rate.
    """
    if not torch.is_grad_enabled() or torch.is_inference_mode_enabled():
        raise RuntimeError("MetaHTR adaptation needs gradients: run it under torch.enable_grad() and outside "
                           "torch.inference_mode (Lightning: Trainer(inference_mode=False))")
    frozen = [k for k, p in params.items() if not p.requires_grad]
    if frozen or set(params) - set(lrs):
        missing = sorted(set(params) - set(lrs))
        raise ValueError(f"adapted tensors must require grad and have a rate: {frozen or missing}")
    params = dict(params)
    with _modes(model), _no_cudnn_rnn(model, support.images.device):
        for _ in range(num_steps):
            logits, h = forward_with(model, params, support)
            loss = support_loss(logits, h, support.targets, model.cfg.pad_id, weight_net, label_smoothing)
            grads = torch.autograd.grad(loss, list(params.values()), create_graph=create_graph,
                                        allow_unused=True)
            params = {k: p if g is None else p - lrs[k] * g
                      for (k, p), g in zip(params.items(), grads, strict=True)}
    return params


class _Search(nn.Module):
    """Wraps a model so ``functional_call`` swaps its parameters for the whole search."""

    def __init__(self, model: HTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: list[Tensor]) -> list[tuple[int, ...]]:
        hyps = decode(self.model, encode_images(self.model, images), search_options())
        return [hs[0].tokens if hs else () for hs in hyps]


@torch.no_grad()
def decode_with(model: HTRModel, params: Mapping[str, Tensor] | None, images: Sequence[Tensor],
                chunk: int = 128) -> list[tuple[int, ...]]:
    """Greedy decoding (no teacher forcing) with ``params`` in place of the module's own (None: θ itself).

    Args:
        images: normalised `(1, H_b, W_b)` tensors; decoded in chunks of at most ``chunk`` (§5).

    Returns:
        Per image, the character ids (no specials); an empty tuple is an empty prediction.
    """
    search = _Search(model)
    prefixed = {f"model.{k}": v for k, v in (params or {}).items()}
    out: list[tuple[int, ...]] = []
    with _modes(model):  # no backward here, so cuDNN may run the LSTMs
        for first in range(0, len(images), chunk):
            out += functional_call(search, prefixed, (list(images[first:first + chunk]),))
    return out


class MetaHTR(nn.Module):
    """The meta-learned state (α, g_γ) of one base model, and the steps that use it.

    The model is an argument of every method, not a submodule, so its weights are owned (saved,
    optimised, exported) by the caller only.

    Args:
        model: the base network whose parameters adapt (names, V and D are read from it).
        cfg: the settings.
    """

    def __init__(self, model: HTRModel, cfg: MetaHTRConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or MetaHTRConfig()
        self.adapted = tuple(adapted_names(model, cfg.adapt))
        self.inner_lr = InnerLearningRates(self.adapted, cfg.initial_inner_lr, cfg.learn_inner_lr)
        self.weight_net = (InstanceWeightNet(model.cfg.vocab_size, model.cfg.feature_dim, cfg.weight_hidden)
                           if cfg.instance_weights else None)

    def base_params(self, model: HTRModel) -> Params:
        """θ: the model's adapted parameters, by name."""
        wanted = set(self.adapted)
        return {n: p for n, p in model.named_parameters() if n in wanted}

    def adapt(self, model: HTRModel, support: WordBatch, *, create_graph: bool | None = None) -> Params:
        """θ' for one writer (:func:`inner_adapt`); ``create_graph`` None: second order unless first order."""
        create_graph = not self.cfg.first_order if create_graph is None else create_graph
        return inner_adapt(model, self.base_params(model), support, self.inner_lr(),
                           weight_net=self.weight_net, num_steps=self.cfg.num_inner_steps,
                           create_graph=create_graph, label_smoothing=self.cfg.label_smoothing)

    def outer_loss(self, model: HTRModel, support: WordBatch, query: WordBatch, *,
                   dropout: bool = False) -> Tensor:
        """L_outer of one task: adapt on ``support``, then the mean CE of ``query`` under θ'.

        Args:
            dropout: dropout in the query pass (the thesis's ``use_dropout``, off by default); BatchNorm
                stays on its running statistics either way.
        """
        fast = self.adapt(model, support)
        with _modes(model, dropout), _no_cudnn_rnn(model, query.images.device):
            logits, _ = forward_with(model, fast, query)
        return query_loss(logits, query.targets, model.cfg.pad_id)

    def writer_profile(self, model: HTRModel, support: WordBatch) -> MetaHTRProfile:
        """Adapt (first order, nothing kept for a backward) and keep θ' − θ of the tensors that moved."""
        with torch.enable_grad():
            fast = self.adapt(model, support, create_graph=False)
        base = self.base_params(model)
        deltas = {k: (fast[k] - p).detach().float().cpu() for k, p in base.items() if fast[k] is not p}
        return MetaHTRProfile(deltas, model.cfg.name, weights_digest(base), len(support))
