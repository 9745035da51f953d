"""Decoding the handwriting models with the shared search of ``recognizers.decoding`` (writer-htr.md §4).

* :func:`encode_images` runs the backbone on each group of equally sized images without pixel padding,
  then pads the *feature maps* with zeros (what ``HTRModel.encode_features`` does to padded cells
  anyway). With the decoders' masking, an image's result therefore does not depend on the batch it is
  in. Training batches (``data.handwriting.collate_images`` + ``HTRModel.encode``) pad pixels instead, as
  the thesis does; both paths agree exactly for a batch of equally sized images.
* :func:`decode` runs greedy search (beam 1, the thesis's decoding) or beam search over
  ``HTRModel.step``; ``<pad>`` and ``<sos>`` are never emitted, and a hypothesis ends at ``<eos>``, so an
  ``<eos>`` right after ``<sos>`` is an empty prediction and tokens after ``<eos>`` never exist
  (pitfall §16.3).

Legend: B images, h×w feature cells, C backbone channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from .. import decoding
from .model import FeatureHook, HTRModel, Memory, State

__all__ = ["decode", "encode_images", "search_options"]

_NO_CAP = 2**31 - 1  # "no cap of its own": decode() applies the model's max_seq_len


def search_options(beam_size: int = 1, nbest: int = 1, *, max_length: int | None = None,
                   length_penalty: float = 0.0, num_groups: int = 1, diversity_penalty: float = 0.0
                   ) -> decoding.DecodingOptions:
    """Search settings; the default is greedy decoding.

    Args:
        beam_size: K (1: greedy).
        nbest: hypotheses returned per image, at most ``beam_size``.
        max_length: most characters; :func:`decode` caps it at the model's ``max_seq_len`` (None: that).
        length_penalty: α of the ranking score Σ log p / length^α (0: raw log-probability).
        num_groups, diversity_penalty: diverse beam search (1 and 0: plain beam search).
    """
    return decoding.DecodingOptions(beam_size=beam_size, nbest=nbest, max_length=max_length or _NO_CAP,
                                    length_penalty=length_penalty, num_groups=num_groups,
                                    diversity_penalty=diversity_penalty)


@torch.no_grad()
def encode_images(model: HTRModel, images: Sequence[Tensor], feature_hook: FeatureHook | None = None
                  ) -> Memory:
    """Encode images of any sizes without padding them (module docstring).

    Args:
        model: the network (eval mode for reproducible results).
        images: B tensors `(1, H_b, W_b)`, normalised (``data.handwriting``), on the model's device.
        feature_hook: hook A for the feature maps, or None.

    Returns:
        The decoder memory of the B images, in order.
    """
    if not images:
        raise ValueError("encode_images needs at least one image")
    groups: dict[tuple[int, ...], list[int]] = {}
    for b, image in enumerate(images):
        if image.dim() != 3 or image.shape[0] != 1:
            raise ValueError(f"image {b}: expected (1, H, W), got {tuple(image.shape)}")
        groups.setdefault(tuple(image.shape), []).append(b)
    maps = {shape: model.feature_map(torch.stack([images[b] for b in members]), feature_hook)
            for shape, members in groups.items()}  # (G, C, h_g, w_g) per size
    height = max(m.shape[2] for m in maps.values())
    width = max(m.shape[3] for m in maps.values())
    first = next(iter(maps.values()))
    feat = first.new_zeros(len(images), first.shape[1], height, width)  # (B, C, h, w)
    mask = torch.ones(len(images), height, width, dtype=torch.bool, device=first.device)  # (B, h, w)
    for shape, members in groups.items():
        index = torch.tensor(members, device=first.device)
        feat[index, :, : maps[shape].shape[2], : maps[shape].shape[3]] = maps[shape]
        mask[index, : maps[shape].shape[2], : maps[shape].shape[3]] = False
    return model.encode_features(feat, mask)


def _reorder(state: State, index: Tensor) -> State:
    return state.index_select(index)


@torch.no_grad()
def decode(model: HTRModel, memory: Memory, options: decoding.DecodingOptions | None = None
           ) -> list[list[decoding.Hypothesis]]:
    """Greedy or beam search from encoded images.

    Args:
        model: the network (eval mode: dropout would make the search random).
        memory: from :func:`encode_images` or ``HTRModel.encode``.
        options: :func:`search_options` (default: greedy); ``max_length`` is capped at the model's
            ``max_seq_len`` and ``max_length_ratio`` is not used (images have no token length).

    Returns:
        `B` lists of up to ``options.nbest`` hypotheses (character ids without specials), best first.
    """
    options = options or search_options()
    cfg = model.cfg
    cap = min(options.max_length or cfg.max_seq_len, cfg.max_seq_len)
    suppress = tuple(dict.fromkeys((*options.suppress_tokens, cfg.pad_id, cfg.sos_id)))
    options = replace(options, max_length=cap, max_length_ratio=None, suppress_tokens=suppress)
    batch = memory.mask.shape[0]
    return decoding.search(model.step, model.init_state(memory), _reorder, batch_size=batch,
                           sos_id=cfg.sos_id, eos_id=cfg.eos_id, options=options, device=memory.mask.device)
