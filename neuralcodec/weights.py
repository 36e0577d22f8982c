"""Model registry and weights I/O.

Models are known by a stable name (never by an index). Each registry entry names a config and
a weights file inside the package (``neuralcodec/models/NAME.safetensors``) together with the
file's sha256, which is checked on every load. Weights are stored with safetensors (no pickle):
tensors in float16, the config as JSON in the file's metadata.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from . import container as ct
from .configs import DECODER_AUTO, DECODER_FULL, DEFAULT_MODEL, MAX_BITS, TokenizerConfig
from .errors import ModelError
from .model import Tokenizer

MODELS_DIR = Path(__file__).parent / "models"
REGISTRY_FILE = MODELS_DIR / "registry.json"
#: Models this package no longer ships (name → the last commit that did). Their weights left
#: the package to keep it within what a GPU lease carries (64 MiB); their streams get an error
#: that names the model and where to find it instead of "unknown model". Cards stay in models/.
RETIRED = {"mgv-default-v1": "b61ce62", "mgv-default-v3": "9fb2336", "mgv-default-v4": "5f6bb16"}


class WeightsError(ModelError):
    """A weights file is missing, corrupted, or does not match its registry entry."""


@dataclass(frozen=True)
class DecoderEntry:
    """A decoder variant of a registered model: another decoder network for the same tokens
    (the model's encoder and quantizer, so every stream and tokens file of the model), e.g. a
    lighter one distilled for speed; ``mgv decode --decoder NAME`` picks it."""

    name: str  # variant name, unique within its model
    file: str  # weights file (the decoder's tensors only) inside the models folder
    sha256: str  # hex sha256 of that file


@dataclass(frozen=True)
class ModelEntry:
    """One registry entry."""

    name: str  # stable model name, stored in every .mgv header
    file: str  # weights file name inside the models folder
    sha256: str  # hex sha256 of the weights file
    folder: Optional[Path] = None  # models folder holding file and registry.json (None: the package's)
    default_bits: Optional[int] = None  # bits per token an encode stores unless told: the model's
    #   measured RD knee (tools/eval_model --knee on validation clips; None: all K bits)
    decoders: Tuple[DecoderEntry, ...] = ()  # the model's decoder variants
    default_decoder: Optional[str] = None  # the variant `--decoder auto` decodes with (None: the
    #   model's own decoder); chosen only when its quality is measured within DEFAULT_DECODER_DB

    @property
    def path(self) -> Path:
        return (self.folder or MODELS_DIR) / self.file


def _registry_file(models_dir: Optional[Path]) -> Path:
    return REGISTRY_FILE if models_dir is None else Path(models_dir) / "registry.json"


def registry(models_dir: Optional[Path] = None) -> Dict[str, ModelEntry]:
    """name → :class:`ModelEntry`, read from ``registry.json`` in ``models_dir`` (default the
    package's ``neuralcodec/models``; another folder lets tools and tests register elsewhere)."""
    reg_file = _registry_file(models_dir)
    if not reg_file.exists():
        return {}
    data = json.loads(reg_file.read_text())
    folder = None if models_dir is None else Path(models_dir)
    out = {}
    for n, e in data.items():
        b = e.get("default_bits")
        if b is not None and (isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= MAX_BITS):
            raise WeightsError(f"{reg_file}: default_bits of {n} must be an integer in 1..{MAX_BITS}")
        decs = tuple(DecoderEntry(k, v["file"], v["sha256"]) for k, v in sorted(e.get("decoders", {}).items()))
        dd = e.get("default_decoder")
        if dd is not None and dd not in {d.name for d in decs}:
            raise WeightsError(f"{reg_file}: default_decoder of {n} names no decoder variant")
        out[n] = ModelEntry(n, e["file"], e["sha256"], folder, b, decs, dd)
    return out


def file_sha256(path: Path) -> str:
    """Hex sha256 of the file at ``path`` (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _write_weights(module: torch.nn.Module, path: Path, meta: Dict[str, str]) -> str:
    """Write ``module``'s state (float16 tensors) and ``meta`` as safetensors at ``path``
    (through a temporary name) → the file's sha256."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float16).contiguous().cpu()
               for k, v in module.state_dict().items()}
    path = Path(path)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)
    return file_sha256(path)


def save_weights(model: Tokenizer, path: Path, name: str) -> str:
    """Write ``model`` (float16 tensors, config in metadata) → returns the file's sha256."""
    return _write_weights(model, path, {"name": name, "config": json.dumps(model.cfg.to_dict()),
                                        "format": "neuralcodec-weights-1"})


def _read_weights(path: Path, expected_sha256: Optional[str], what: str):
    """A safetensors weights file → (its sha256, metadata, config, float32 tensors) →
    :class:`WeightsError` when it is missing, its hash is not ``expected_sha256`` or it does not
    read (``what`` names it in the message)."""
    from safetensors import safe_open

    if not path.is_file():
        raise WeightsError(f"{what} file not found: {path}")
    got = file_sha256(path)
    if expected_sha256 is not None and got != expected_sha256:
        raise WeightsError(f"sha256 mismatch for {path.name}: expected {expected_sha256[:16]}…, got {got[:16]}…")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            cfg = TokenizerConfig.from_dict(json.loads(meta["config"]))
            state = {k: f.get_tensor(k).float() for k in f.keys()}
    except Exception as e:  # safetensors raises several types for a malformed file
        raise WeightsError(f"cannot read {what} {path.name}: {e}") from None
    return got, meta, cfg, state


def load_weights_file(path: Path, expected_sha256: str | None = None,
                      name: Optional[str] = None) -> Tokenizer:
    """Load a safetensors weights file → :class:`Tokenizer` in eval mode (float32) whose
    identity is ``name`` (default: the name stored in the file) and the file's sha256.

    Raises :class:`WeightsError` if the hash does not match ``expected_sha256``, the file is
    not safetensors, or its tensors do not fit its config.
    """
    path = Path(path)
    got, meta, cfg, state = _read_weights(path, expected_sha256, "weights")
    with torch.device("meta"):  # no random init of weights that are replaced right away
        model = Tokenizer(cfg, name=name or meta.get("name"), sha256=got)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"weights {path.name} do not fit their config: {str(e).splitlines()[0]}") from None
    return model.eval()


def load_model(name: str = DEFAULT_MODEL, models_dir: Optional[Path] = None) -> Tokenizer:
    """Load a registered model by name (hash checked) from ``models_dir`` (default: the
    package's models folder)."""
    reg = registry(models_dir)
    if name not in reg and name in RETIRED:
        raise WeightsError(f"model '{name}' is no longer shipped: decode its streams with neuralcodec "
                           f"at commit {RETIRED[name]} (git checkout {RETIRED[name]}), which has its weights")
    if name not in reg:
        known = ", ".join(sorted(reg)) or "none"
        raise WeightsError(f"unknown model '{name}' (known: {known})")
    e = reg[name]
    return load_weights_file(e.path, e.sha256, name=name)


def register(name: str, file: str, sha256: str, models_dir: Optional[Path] = None,
             default_bits: Optional[int] = None) -> None:
    """Add or replace a registry entry (used by the export and import tools) in
    ``models_dir`` (default: the package's models folder)."""
    reg_file = _registry_file(models_dir)
    data = json.loads(reg_file.read_text()) if reg_file.exists() else {}
    data[name] = {"file": file, "sha256": sha256}
    if default_bits is not None:
        data[name]["default_bits"] = int(default_bits)
    reg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def register_decoder(model: str, variant: str, file: str, sha256: str,
                     models_dir: Optional[Path] = None, default: bool = False) -> None:
    """Add or replace decoder variant ``variant`` of the registered ``model`` (``default``: make
    it the variant ``--decoder auto`` uses)."""
    if variant in (DECODER_AUTO, DECODER_FULL):
        raise WeightsError(f"{variant!r} is not a variant name")
    reg_file = _registry_file(models_dir)
    data = json.loads(reg_file.read_text())
    if model not in data:
        raise WeightsError(f"unknown model '{model}'")
    data[model].setdefault("decoders", {})[variant] = {"file": file, "sha256": sha256}
    if default:
        data[model]["default_decoder"] = variant
    reg_file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


# ---- decoder variants -------------------------------------------------------------------------
# Largest loss in PSNR-RGB (dB) against the model's own decoder, at every rate point of the eval
# clips, that lets a variant be a model's default_decoder (issue 34's bar).
DEFAULT_DECODER_DB = 0.3
DECODER_FORMAT = "neuralcodec-decoder-1"


def save_decoder(model: Tokenizer, path: Path, base: Tokenizer, variant: str) -> str:
    """Write the decoder of ``model`` as decoder variant ``variant`` of the registered model
    ``base`` (float16 decoder tensors; config, base name and sha256 in metadata) → the file's
    sha256. ``model`` must code like ``base`` (:meth:`TokenizerConfig.same_code`)."""
    if not model.cfg.same_code(base.cfg):
        raise WeightsError("the variant's config differs from its model's beyond the decoder layers")
    theirs = base.state_dict()
    for k, v in model.state_dict().items():
        if not k.startswith("decoder.") and not torch.equal(v.float().cpu(), theirs[k].float().cpu()):
            raise WeightsError(f"{k} differs from {base.name}'s: a decoder variant keeps the model's encoder")
    return _write_weights(model.decoder, path, {
        "format": DECODER_FORMAT, "model": str(base.name), "model_sha256": str(base.sha256),
        "variant": variant, "config": json.dumps(model.cfg.to_dict())})


def load_decoder_file(path: Path, base: Tokenizer, expected_sha256: str | None = None,
                      variant: Optional[str] = None) -> Tokenizer:
    """``base`` (a loaded model) with the decoder of the variant file at ``path``
    (:meth:`Tokenizer.with_decoder`: its encoder, quantizer and identity shared), float32, eval
    mode → :class:`WeightsError` when the hash differs from ``expected_sha256``, the file is not
    a decoder variant of ``base`` (its weights' sha256) or its tensors do not fit its config."""
    from .model import Decoder

    path = Path(path)
    sha, meta, cfg, state = _read_weights(path, expected_sha256, "decoder weights")
    if meta.get("format") != DECODER_FORMAT or meta.get("model_sha256") != base.sha256:
        raise WeightsError(f"{path.name} is not a decoder variant of {base.name}")
    with torch.device("meta"):
        dec = Decoder(cfg)
    try:
        dec.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as e:
        raise WeightsError(f"decoder weights {path.name} do not fit their config: {str(e).splitlines()[0]}") from None
    try:
        return base.with_decoder(dec.eval(), variant or meta.get("variant") or path.stem, sha)
    except ValueError as e:  # a config that does not code like base's
        raise WeightsError(f"{path.name}: {e}") from None


def decoder_variant(model: Tokenizer, choice: str = DECODER_AUTO,
                    models_dir: Optional[Path] = None) -> Optional[Tokenizer]:
    """The decoder ``choice`` of ``model`` (a loaded model) as a model sharing its encoder:
    None for ``full`` (the model's own decoder) and for ``auto`` when the registry names no
    default variant for this model (or the model is not registered with these weights); a
    variant name loads that variant → :class:`WeightsError` when the model has no such variant."""
    if choice == DECODER_FULL:
        return None
    e = registry(models_dir).get(model.name) if isinstance(model.name, str) else None
    if e is not None and e.sha256 != model.sha256:
        e = None
    if choice == DECODER_AUTO:
        choice = e.default_decoder if e is not None else None
        if choice is None:
            return None
    variants = e.decoders if e is not None else ()
    found = next((d for d in variants if d.name == choice), None)
    if found is None:
        known = ", ".join([DECODER_AUTO, DECODER_FULL] + [d.name for d in variants])
        raise WeightsError(f"model {model.name} has no decoder '{choice}' (known: {known})")
    return load_decoder_file((e.folder or MODELS_DIR) / found.file, model, found.sha256, found.name)


def default_bits(model: torch.nn.Module) -> int:
    """Bits per token an encode with ``model`` stores unless told otherwise: the registry's
    ``default_bits`` of the registered model with this name and weights (its measured RD knee),
    else all K bits (a model outside the registry, or registered without one)."""
    k = int(model.cfg.bits)
    name, sha = getattr(model, "name", None), getattr(model, "sha256", None)
    e = registry().get(name) if isinstance(name, str) else None
    if e is None or e.default_bits is None or e.sha256 != sha:
        return k
    return min(e.default_bits, k)


# ---- identity checks --------------------------------------------------------------------------
ModelSource = Union[torch.nn.Module, Callable[[str], torch.nn.Module], None]


def model_identity(model: torch.nn.Module) -> Tuple[str, bytes]:
    """(name, first 16 bytes of the weights' sha256) of a model: the identity a stream's
    header records → :class:`ModelError` when the model has none (load it with
    :func:`load_model`, or construct it with ``Tokenizer(cfg, name=…, sha256=…)``)."""
    name = getattr(model, "name", None)
    sha = getattr(model, "sha256", None)
    if not isinstance(name, str) or not isinstance(sha, str):
        raise ModelError("the model has no name/sha256 (load it with weights.load_model, or "
                         "construct it with Tokenizer(cfg, name=..., sha256=...))")
    try:
        digest = bytes.fromhex(sha)
    except ValueError:
        raise ModelError(f"model sha256 {sha!r} is not hex") from None
    if len(digest) < 16:
        raise ModelError("model sha256 is shorter than 16 bytes")
    return name, digest[:16]


def resolve_model(header: ct.Header, model: ModelSource = None) -> torch.nn.Module:
    """The model a stream names, checked against the header (sha256 prefix, K and factors).

    ``model``: None (load the registered model of that name), a callable ``name → model``, or
    a model object. Raises :class:`ModelError`.
    """
    try:
        if model is None:
            m = load_model(header.model_name)
        elif isinstance(model, torch.nn.Module):
            m = model
        else:
            m = model(header.model_name)
    except WeightsError as e:
        raise ModelError(str(e)) from None
    name, prefix = model_identity(m)
    if prefix != header.model_sha256:
        raise ModelError(f"stream needs model {header.model_name} with sha256 "
                         f"{header.model_sha256.hex()}…, got {name} with {prefix.hex()}…")
    cfg = m.cfg
    if (cfg.bits, cfg.temporal_factor, cfg.spatial_factor) != (
            header.model_bits, header.temporal_factor, header.spatial_factor):
        raise ModelError("model geometry (bits, temporal, spatial factor) does not match the stream")
    return m
