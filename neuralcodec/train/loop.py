"""The training loop: mixed image / video batches, nested-bit rate training, EMA, a
time-budgeted cosine schedule, atomic checkpoints with exact resume, a CSV log."""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Tuple

import numpy as np
import torch

from ..configs import CONFIGS, TokenizerConfig
from ..model import Tokenizer
from .data import ClipSampler, load_folder
from .losses import LossWeights, entropy_weight, psnr, reconstruction_loss


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    # tokenizer config name (see neuralcodec.configs.CONFIGS)
    model: str = "default"
    # folder of training videos
    data: str = "../shared/data/train"
    # output folder: checkpoint, log, exported weights
    out: str = "runs/default"
    # decoded-frame cache folder
    cache: str = ".cache/frames"
    # short side of the decoded training frames (area downscale)
    short_side: int = 360
    # clips per video batch
    batch: int = 8
    # frames per video clip (1 + 4k)
    frames: int = 9
    # crop size of video clips
    crop: int = 64
    # fraction of steps that are image (single-frame) batches
    image_frac: float = 0.3
    # images per image batch
    image_batch: int = 16
    # crop size of image batches
    image_crop: int = 96
    # rate points trained as nested codes: with prob nested_prob a step keeps only the first b bits
    nested_bits: Tuple[int, ...] = (6, 10, 14)
    # probability that a step drops trailing bits
    nested_prob: float = 0.25
    # peak learning rate (Adam)
    lr: float = 1e-3
    # linear warm-up steps
    warmup: int = 200
    # training budget in minutes (cosine schedule over elapsed time)
    minutes: float = 60.0
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


def lr_at(tc: TrainConfig, step: int, frac: float) -> float:
    warm = min(1.0, (step + 1) / max(tc.warmup, 1))
    cos = tc.lr_floor + (1 - tc.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return tc.lr * warm * cos


def save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train(tc: TrainConfig) -> Tokenizer:
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg: TokenizerConfig = CONFIGS[tc.model]
    model = Tokenizer(cfg)
    ema = copy.deepcopy(model).eval()
    opt = torch.optim.Adam(model.parameters(), lr=tc.lr, betas=(0.9, 0.99))
    step, elapsed = 0, 0.0
    rng_state = None
    ckpt = out / "checkpoint.pt"
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, elapsed = st["step"], st["elapsed"]
        rng_state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    (out / "train_config.json").write_text(json.dumps(asdict(tc), indent=2))

    videos = load_folder(Path(tc.data), Path(tc.cache), tc.short_side)
    sampler = ClipSampler(videos, seed=tc.seed + step)
    if rng_state is not None:
        sampler.rng.bit_generator.state = json.loads(rng_state)
    val = ClipSampler(videos, seed=12345).sample(8, tc.frames, tc.crop)

    log_path = out / "log.csv"
    new_log = not log_path.exists()
    logf = open(log_path, "a", newline="")
    log = csv.writer(logf)
    if new_log:
        log.writerow(["step", "minutes", "lr", "loss", "psnr", "entropy", "codebook_entropy", "val_psnr_ema"])
    t_last = time.time()
    last_ckpt = elapsed
    model.train()
    while elapsed < tc.minutes * 60:
        frac = elapsed / (tc.minutes * 60)
        lr = lr_at(tc, step, frac)
        for g in opt.param_groups:
            g["lr"] = lr
        if sampler.rng.random() < tc.image_frac:
            x = sampler.sample(tc.image_batch, 1, tc.image_crop)
        else:
            x = sampler.sample(tc.batch, tc.frames, tc.crop)
        bits = None
        if tc.nested_bits and sampler.rng.random() < tc.nested_prob:
            bits = int(sampler.rng.choice(tc.nested_bits))
        recon, q = model(x, bits=bits)
        rec = reconstruction_loss(tc.loss, recon, x)
        loss = rec + entropy_weight(tc.loss, step) * q.entropy_loss + tc.loss.commit * q.commit_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
        opt.step()
        with torch.no_grad():
            d = min(tc.ema, (1 + step) / (10 + step))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
        step += 1
        now = time.time()
        elapsed += now - t_last
        t_last = now
        if step % tc.log_every == 0:
            with torch.no_grad():
                vp = psnr(ema(val)[0], val) if step % (tc.log_every * 8) == 0 else float("nan")
            log.writerow([step, f"{elapsed / 60:.2f}", f"{lr:.2e}", f"{loss.item():.5f}",
                          f"{psnr(recon.detach(), x):.2f}", f"{q.per_sample_entropy.item():.3f}",
                          f"{q.codebook_entropy.item():.3f}", f"{vp:.2f}"])
            logf.flush()
            print(f"step {step} {elapsed / 60:.1f}min lr {lr:.1e} loss {loss.item():.4f} "
                  f"psnr {psnr(recon.detach(), x):.2f} bits={bits} val_ema {vp:.2f}", flush=True)
        if elapsed - last_ckpt > tc.ckpt_minutes * 60 or elapsed >= tc.minutes * 60:
            save_checkpoint(ckpt, {
                "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                "step": step, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
                "rng": json.dumps(sampler.rng.bit_generator.state)})
            last_ckpt = elapsed
    logf.close()
    return ema
