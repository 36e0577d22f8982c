"""The settings of one training run: :class:`TrainConfig`, with the batch shapes
(:class:`~lab.train.data.BatchSpec`) and the loss weights
(:class:`~lab.train.losses.LossWeights`) nested in it. Every field is a flag of
``python -m lab.train`` (:mod:`lab.train.args`); a run writes it as
``train_config.json``."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Tuple

from neuralcodec.configs import TokenizerConfig
from lab.configs import LAB_CONFIGS as CONFIGS
from neuralcodec.errors import InputError
from .data import BatchSpec
from .losses import LossWeights


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    # tokenizer config name (see lab.configs.LAB_CONFIGS)
    model: str = "default"
    # JSON object of TokenizerConfig fields that override the named config, e.g. '{"bits": 32}'
    # ("" = the named config as it is)
    arch: str = ""
    # folder of training videos
    data: str = "../shared/data/train"
    # output folder: checkpoint, log, exported weights
    out: str = "runs/default"
    # decoded-frame cache folder
    cache: str = ".cache/frames"
    # short side of the decoded training frames (area downscale)
    short_side: int = 360
    # what the batches look like: clips, frames, crops, image batches, nested rates, stills
    batches: BatchSpec = field(default_factory=BatchSpec)
    # image-first curriculum: this fraction of the budget trains on image batches only, then
    # the mixed schedule (image_frac) takes over (in-RAM sampler only)
    image_first: float = 0.0
    # peak learning rate (Adam)
    lr: float = 1e-3
    # Adam's second-moment decay (beta1 is 0.9)
    adam_beta2: float = 0.99
    # linear warm-up steps
    warmup: int = 200
    # training budget in minutes (cosine schedule over elapsed time); ignored when steps > 0
    minutes: float = 60.0
    # what the minutes count: "wall" (elapsed wall-clock time) or "cpu" (CPU time of this
    # process, all threads summed: a budget that other load on the machine does not eat)
    clock: str = "wall"
    # final learning rate as a fraction of the peak
    lr_floor: float = 0.05
    # EMA decay of the weights
    ema: float = 0.999
    # gradient-norm clip
    clip: float = 1.0
    # checkpoint every this many minutes
    ckpt_minutes: float = 5.0
    # log every this many steps
    log_every: int = 25
    # CPU threads
    threads: int = 2
    # random seed
    seed: int = 0
    # loss weights
    loss: LossWeights = field(default_factory=LossWeights)
    # training budget in steps (> 0: cosine schedule over steps, reproducible; 0: use minutes)
    steps: int = 0
    # also checkpoint every this many steps (0 = only by time and at the end)
    ckpt_every: int = 0
    # data-loader worker processes (0 = the in-RAM sampler in this process, the default)
    workers: int = 0
    # folder of still images for the image (first-frame) batches ("" = none)
    stills: str = ""
    # device: auto (CUDA if available), cpu or cuda
    device: str = "auto"
    # bf16 autocast of the forward passes on CUDA (no-op on CPU)
    bf16: bool = True
    # bf16 autocast on CPU too (1.55–1.63× faster steps on a CPU with AVX512-BF16; weights stay fp32)
    cpu_bf16: bool = False
    # folder of evaluation videos ("" = no periodic evaluation)
    eval_dir: str = ""
    # evaluate the EMA model every this many steps (0 = never)
    eval_every: int = 0
    # frames per evaluation clip
    eval_frames: int = 17
    # short side of the evaluation clips (area downscale)
    eval_short_side: int = 288
    # rate points (leading bits) reported by the evaluation (full rate always included)
    eval_bits: Tuple[int, ...] = (2, 6, 10)
    # discriminator: channels of its first layer
    disc_channels: int = 64
    # discriminator: stride-2 layers
    disc_layers: int = 3
    # discriminator learning rate (Adam)
    disc_lr: float = 1e-4
    # warm start: a registered model name or a .safetensors path whose weights start a fresh
    # run (model and EMA; the optimizer starts fresh); ignored when resuming ("" = random init)
    init: str = ""
    # warm start takes only the tensors whose name and shape match the run's model (e.g. an
    # old encoder and quantizer under a new decoder); the others keep their random init
    init_partial: bool = False
    # which part learns: "all", or "decoder" (encoder and quantizer frozen: the code, and so
    # every stream's tokens, stay those of the start model; VidTok's second stage — cheaper
    # steps, larger crops affordable)
    train_only: str = "all"

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of ``asdict`` (lists → tuples, ``loss`` → LossWeights, ``batches`` →
        BatchSpec; the BatchSpec fields may also stand at the top level, as in the
        ``train_config.json`` of runs made before they were nested); unknown keys → error."""
        tup = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        spec_names = {f.name for f in fields(BatchSpec)}
        spec = {k: tup.pop(k) for k in list(tup) if k in spec_names}
        unknown = set(tup) - {f.name for f in fields(cls)}
        if unknown:
            raise InputError(f"unknown train config keys {sorted(unknown)}")
        if isinstance(tup.get("loss"), dict):
            tup["loss"] = LossWeights(**tup["loss"])
        if isinstance(tup.get("batches"), dict) or spec:
            given = tup.get("batches") or {}
            given = asdict(given) if isinstance(given, BatchSpec) else given
            tup["batches"] = BatchSpec(**{k: tuple(v) if isinstance(v, list) else v
                                          for k, v in {**given, **spec}.items()})
        return cls(**tup)

    def tokenizer_config(self) -> TokenizerConfig:
        """The named config with the ``arch`` overrides applied (InputError when invalid)."""
        if self.model not in CONFIGS:
            raise InputError(f"unknown model config {self.model!r} (known: {', '.join(CONFIGS)})")
        cfg = CONFIGS[self.model]
        if not self.arch:
            return cfg
        try:
            return cfg.with_json(self.arch)
        except (ValueError, TypeError) as e:
            raise InputError(f"--arch {self.arch!r}: {e}") from None
