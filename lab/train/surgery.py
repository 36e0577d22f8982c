"""Model surgery: warm starts across configurations. Grow a model by bits or bit planes
(:func:`grow_bits`), change its down-sampling factors (:func:`change_factors`), and load the
weights a training run starts from (:func:`init_weights`)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from neuralcodec.configs import TokenizerConfig
from neuralcodec.errors import InputError
from neuralcodec.model import Tokenizer


def grown_config(cfg: TokenizerConfig, bits: int) -> TokenizerConfig:
    """``cfg`` with ``bits`` > K bits per token: more LFQ signs, or for a "planes" model more bit
    planes of the same latent channels (``bits`` a multiple of K / P; the new planes refine every
    channel's value, appended after the old bits as the spec's plane-major order puts them).
    InputError when ``bits`` cannot grow ``cfg``."""
    k = cfg.bits
    if bits <= k:
        raise InputError(f"cannot grow a {k}-bit model to {bits} bits")
    if cfg.quantizer != "planes":
        return replace(cfg, bits=bits)
    c = cfg.latent_channels
    if bits % c:
        raise InputError(f"a planes model of {c} latent channels grows by whole planes: "
                         f"bits must be a multiple of {c}, got {bits}")
    return replace(cfg, bits=bits, planes=bits // c)


def grow_bits(start: Tokenizer, bits: int) -> Tokenizer:
    """A copy of ``start`` with ``bits`` > K bits per token (:func:`grown_config`), coding
    exactly as ``start`` on its K bits: an LFQ encoder's output projection keeps its K rows and
    gets fresh random rows for the new bits (a "planes" encoder is unchanged: its new planes are
    finer quantization of the same channels); every layer that reads the codes (the decoder's
    input convolution and the AdaGN projections) keeps its weights for the first K code
    channels and gets zero weights for the new ones, so decoding the first K bits (the rest
    dropped or not) is unchanged until training teaches the decoder to use the new bits
    (nested-rate training keeps the old ones meaningful)."""
    grown = Tokenizer(grown_config(start.cfg, bits))
    old = start.state_dict()
    new = grown.state_dict()
    with torch.no_grad():
        for name, t in new.items():
            o = old[name]
            if o.shape == t.shape:
                t.copy_(o)
                continue
            if t.dim() >= 2 and t.shape[1] != o.shape[1]:  # reads the codes: new inputs are zero
                t.zero_()
            t[tuple(slice(0, n) for n in o.shape)].copy_(o)
    return grown


def _fold_channels(t: torch.Tensor, dim: int, cout: int, old, new, reduce: str) -> torch.Tensor:
    """``t`` with its axis ``dim`` of an Upsample's ``cout·ss·ss·st`` channels (order
    ``((c·ss + i)·ss + j)·st + s``) changed from factors ``old`` = (ss, st) to ``new``: a factor
    that shrinks to 1 is averaged (``reduce="mean"``: output channels) or summed ("sum": input
    channels of the next convolution, so that it sees the same total); one that grows from 1 is
    repeated (input channels also divided by it)."""
    (sso, sto), (ssn, stn) = old, new
    shape = list(t.shape)
    v = t.reshape(shape[:dim] + [cout, sso, sso, sto] + shape[dim + 1:])
    for axes, o, n in (((dim + 1, dim + 2), sso, ssn), ((dim + 3,), sto, stn)):
        if o == n:
            continue
        if n == 1:
            v = v.mean(axes, keepdim=True) if reduce == "mean" else v.sum(axes, keepdim=True)
        else:
            size = list(v.shape)
            for a in axes:
                size[a] = n
            v = v.expand(size) / (n ** len(axes) if reduce == "sum" else 1)
    return v.reshape(shape[:dim] + [cout * ssn * ssn * stn] + shape[dim + 1:]).contiguous()


def _only_factors_differ(a: TokenizerConfig, b: TokenizerConfig) -> bool:
    """True when ``a`` and ``b`` have the same levels and differ at most in their down-sampling
    factors (``spatial_down``, ``temporal_down``)."""
    if len(a.spatial_down) != len(b.spatial_down):
        return False
    return replace(a, spatial_down=b.spatial_down, temporal_down=b.temporal_down) == b


def change_factors(start: Tokenizer, cfg: TokenizerConfig) -> Tokenizer:
    """A model of ``cfg`` — ``start``'s config with other ``spatial_down`` / ``temporal_down``
    (e.g. 4× instead of 8× in space: 4× the tokens) — that computes nearly what ``start`` does:
    every weight is copied (a strided convolution keeps its kernel, only its stride changes)
    except the convolutions of a decoder Upsample whose factors change, whose sub-pixel /
    sub-frame output channels are averaged (a factor dropped) or repeated (a factor added). The
    warm start for a higher- or lower-rate member of a model family."""
    if not _only_factors_differ(start.cfg, cfg):
        raise InputError("change_factors: the configs may differ only in spatial_down / temporal_down")
    model = Tokenizer(cfg)
    old = start.state_dict()
    new = model.state_dict()
    folds = {}
    for name, up in model.decoder.ups.named_children():
        src = start.decoder.ups[int(name)]
        if (src.ss, src.st) != (up.ss, up.st):
            folds[f"decoder.ups.{name}.conv."] = (up.cout, (src.ss, src.st), (up.ss, up.st))
    with torch.no_grad():
        for name, t in new.items():
            o = old[name]
            prefix = next((k for k in folds if name.startswith(k)), None)
            if prefix is not None:
                cout, fo, fn = folds[prefix]
                o = _fold_channels(o, 0, cout, fo, fn, "mean")
                if name.endswith("body.1.conv.weight"):  # the factorized temporal conv reads them
                    o = _fold_channels(o, 1, cout, fo, fn, "sum")
            t.copy_(o)
    return model


def init_weights(spec: str, cfg: TokenizerConfig, partial: bool = False) -> Tokenizer:
    """Weights to warm-start from: ``spec`` is a .safetensors path or a registered model name;
    its config must equal ``cfg``, or differ only in having fewer bits (LFQ) or bit planes (then
    it is grown with :func:`grow_bits`) or in its down-sampling factors (:func:`change_factors`); else InputError. ``partial``: any config; a model of ``cfg`` (seeded
    random init) receives every tensor of ``spec`` whose name and shape match, the rest stay
    random (``copied`` / ``fresh`` attributes count the tensors)."""
    from neuralcodec.weights import load_model, load_weights_file
    start = load_weights_file(Path(spec)) if spec.endswith(".safetensors") else load_model(spec)
    if partial:
        model = Tokenizer(cfg)
        own, src = model.state_dict(), start.state_dict()
        take = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
        if not take:
            raise InputError(f"--init {spec}: no tensor matches the run's model")
        model.load_state_dict(take, strict=False)
        model.copied, model.fresh = len(take), len(own) - len(take)  # type: ignore[attr-defined]
        return model
    if start.cfg == cfg:
        return start
    if cfg.bits > start.cfg.bits and replace(start.cfg, bits=cfg.bits, planes=cfg.planes) == cfg:
        grown = grown_config(start.cfg, cfg.bits)  # a planes model keeps its channels
        if grown != cfg:
            raise InputError(f"--init {spec}: {cfg.bits} bits of its {start.cfg.latent_channels} "
                             f"latent channels are {grown.planes} planes, not {cfg.planes}")
        return grow_bits(start, cfg.bits)
    if _only_factors_differ(start.cfg, cfg):
        return change_factors(start, cfg)
    raise InputError(f"--init {spec}: its config differs from the run's model config")
