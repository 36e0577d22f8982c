"""The training loop: mixed image / video batches, nested-bit rate training, EMA, a
time- or step-budgeted cosine schedule, optional LPIPS and adversarial (3D PatchGAN + LeCAM)
losses, bf16 autocast on GPU, DDP across processes, atomic checkpoints with exact resume,
a CSV log (+ PNG plot when matplotlib is installed) and periodic rate–distortion evaluation.

Checkpoint (``OUT/checkpoint.pt``, ``torch.load(weights_only=True)``-safe) keys:
``model``, ``ema``, ``opt``, ``step``, ``elapsed`` (s), ``rng`` (JSON of the in-RAM
sampler's generator state, or "" with worker data), ``torch_rng``; optional ``disc``,
``disc_opt``, ``lecam`` (adversarial runs).
"""
from __future__ import annotations

import copy
import csv
import json
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import torch

from neuralcodec.configs import TokenizerConfig
from neuralcodec.errors import InputError
from neuralcodec.model import Tokenizer
from .config import TrainConfig
from .data import BatchStream, ClipSampler, load_folder, load_images, make_loader
from .distributed import DistInfo, broadcast_float, cleanup, init_distributed, average_gradients
from .losses import entropy_weight, frame_subset, psnr, reconstruction_loss
from .surgery import init_weights


def make_clock(kind: str):
    """``"wall"`` → wall-clock seconds; ``"cpu"`` → CPU seconds of this process (all threads)."""
    if kind == "wall":
        return time.time
    if kind == "cpu":
        return time.process_time
    raise InputError(f"clock must be wall or cpu, got {kind!r}")


def lr_at(tc: TrainConfig, step: int, frac: float) -> float:
    """Linear warm-up over ``tc.warmup`` steps times a cosine from 1 to ``tc.lr_floor``
    over the run (``frac`` in [0, 1] = fraction of the budget spent)."""
    warm = min(1.0, (step + 1) / max(tc.warmup, 1))
    cos = tc.lr_floor + (1 - tc.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
    return tc.lr * warm * cos


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic write (temp file + rename)."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def plot_log(log_csv: Path, png: Path) -> bool:
    """Plot loss, PSNR and entropies of ``log.csv`` into ``png``. False (no file) when
    matplotlib is not installed or the log is empty."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    with open(log_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return False

    def col(name):
        return [float(r[name]) if r.get(name) not in (None, "", "nan") else float("nan") for r in rows]

    steps = col("step")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(steps, col("loss"))
    axes[0].set_title("loss")
    axes[1].plot(steps, col("psnr"), label="train")
    vp = col("val_psnr_ema")
    axes[1].plot([s for s, v in zip(steps, vp) if v == v], [v for v in vp if v == v], "o-", label="val EMA")
    axes[1].set_title("PSNR (dB)")
    axes[1].legend()
    axes[2].plot(steps, col("entropy"), label="per-sample")
    axes[2].plot(steps, col("codebook_entropy"), label="codebook")
    axes[2].set_title("entropy (bits)")
    axes[2].legend()
    for a in axes:
        a.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    plt.close(fig)
    return True


LOG_FIELDS = ["step", "minutes", "lr", "loss", "psnr", "entropy", "codebook_entropy", "val_psnr_ema",
              "lpips", "g_adv", "d_loss"]
EVAL_FIELDS = ["step", "minutes", "bits", "bpp", "psnr", "ms_ssim", "bit_usage", "token_entropy", "bit_entropy"]


def _open_csv(path: Path, names):
    """Append-mode DictWriter; an existing file keeps its own header (older runs)."""
    if path.exists() and path.stat().st_size:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None) or list(names)
        fh = open(path, "a", newline="")
        return fh, csv.DictWriter(fh, header, extrasaction="ignore")
    fh = open(path, "w", newline="")
    w = csv.DictWriter(fh, list(names), extrasaction="ignore")
    w.writeheader()
    return fh, w


def load_run(out: Path, key: str = "ema") -> Tokenizer:
    """The model of a run folder: its ``train_config.json`` gives the architecture (``model``
    + ``arch``), ``checkpoint.pt`` the weights (``key`` = "ema" or "model") → Tokenizer on the
    CPU in eval mode, with ``step`` and ``elapsed`` (s) of the checkpoint as attributes."""
    out = Path(out)
    try:
        tc = TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
        st = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError) as e:
        raise InputError(f"{out}: not a finished training run ({e})") from None
    model = Tokenizer(tc.tokenizer_config())
    model.load_state_dict(st[key])
    model.step, model.elapsed = int(st["step"]), float(st["elapsed"])  # type: ignore[attr-defined]
    return model.eval()


def train(tc: TrainConfig, stop_at: Optional[int] = None) -> Tokenizer:
    """Train (or resume from ``OUT/checkpoint.pt``) → the EMA model (on CPU, eval mode).
    ``stop_at``: leave (after checkpointing) once this step is reached, as an interrupted run
    would; the schedule is unchanged, so resuming continues exactly."""
    info = init_distributed(tc.device)
    try:
        return _train(tc, info, stop_at)
    finally:
        cleanup(info)


def _train(tc: TrainConfig, info: DistInfo, stop_at: Optional[int]) -> Tokenizer:
    if tc.steps <= 0 and tc.minutes <= 0:
        raise InputError("need steps > 0 or minutes > 0")
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    dev = info.device
    if dev.type == "cuda":  # two batch shapes (video, image): pick the fastest conv algorithms once
        torch.backends.cudnn.benchmark = True
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    cfg: TokenizerConfig = tc.tokenizer_config()
    clock = make_clock(tc.clock)
    if tc.image_first > 0 and (tc.workers > 0 or info.active):
        raise InputError("image_first needs the in-RAM sampler (workers 0, one process)")
    model = Tokenizer(cfg)
    ema = copy.deepcopy(model).eval()
    w = tc.loss
    use_gan = w.gan > 0
    disc = dopt = lecam = None
    if use_gan:
        from .discriminator import DiscriminatorConfig, LeCAM, PatchDiscriminator3D
        disc = PatchDiscriminator3D(DiscriminatorConfig(tc.disc_channels, tc.disc_layers,
                                                        min(8, tc.disc_channels)))
        lecam = LeCAM()
    step, elapsed = 0, 0.0
    rng_state = ""
    ckpt = out / "checkpoint.pt"
    st = None
    if ckpt.exists():
        st = torch.load(ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        step, elapsed = st["step"], st["elapsed"]
        rng_state = st["rng"]
        torch.set_rng_state(st["torch_rng"])
        if use_gan and "disc" in st:
            disc.load_state_dict(st["disc"])
            lecam.load_state_dict(st["lecam"])
        if info.main:
            print(f"resumed at step {step}, {elapsed / 60:.1f} min", flush=True)
    elif tc.init:
        start = init_weights(tc.init, cfg, tc.init_partial)
        model.load_state_dict(start.state_dict())
        ema.load_state_dict(start.state_dict())
        if info.main:
            part = (f", {start.copied} tensors copied, {start.fresh} fresh"  # type: ignore[attr-defined]
                    if tc.init_partial else "")
            print(f"warm start from {tc.init} ({cfg.bits} bits{part})", flush=True)
    model.to(dev)
    ema.to(dev)
    if tc.train_only == "decoder":
        if not (tc.init or st is not None):
            raise InputError("train_only=decoder needs a start model (--init) to freeze")
        model.encoder.requires_grad_(False)
        model.quantizer.requires_grad_(False)
    elif tc.train_only != "all":
        raise InputError(f"train_only must be 'all' or 'decoder', not {tc.train_only!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=tc.lr, betas=(0.9, tc.adam_beta2))
    if use_gan:
        disc.to(dev)
        lecam.to(dev)
        dopt = torch.optim.Adam(disc.parameters(), lr=tc.disc_lr, betas=(0.5, 0.99))
    if st is not None:
        opt.load_state_dict(st["opt"])
        if use_gan and "disc_opt" in st:
            dopt.load_state_dict(st["disc_opt"])
    net = model
    if info.active:
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    lpips = None
    if w.perceptual > 0:
        from neuralcodec.lpips import LPIPS
        lpips = LPIPS(w.perceptual_net).to(dev)
    if info.main:
        (out / "train_config.json").write_text(json.dumps(asdict(tc), indent=2))

    # ---- data ---------------------------------------------------------------------------
    use_workers = tc.workers > 0 or info.active
    videos = load_folder(Path(tc.data), Path(tc.cache), tc.short_side, mmap=use_workers,
                         procs=max(1, tc.workers))
    stills = (load_images(Path(tc.stills), Path(tc.cache), tc.short_side, mmap=use_workers,
                          procs=max(1, tc.workers), min_size=tc.batches.image_crop) if tc.stills else [])
    spec = tc.batches
    sampler = batches = None
    if use_workers:
        batches = iter(make_loader(BatchStream(spec, videos, stills, tc.seed, info.rank, step), tc.workers))
    else:
        sampler = ClipSampler(videos, seed=tc.seed + step, stills=stills, still_frac=spec.still_frac,
                              clip_frames=spec.clip_frames)
        if rng_state:
            sampler.rng.bit_generator.state = json.loads(rng_state)

    def next_batch():
        if batches is not None:
            b = next(batches)
            return b["x"], (None if b["bits"] < 0 else int(b["bits"]))
        image_only = budget_frac(step, elapsed) < tc.image_first
        if image_only or sampler.rng.random() < spec.image_frac:
            x = sampler.sample_images(spec.image_batch, spec.image_crop)
        else:
            x = sampler.sample(spec.batch, spec.frames, spec.crop)
        bits = None
        if spec.nested_bits and sampler.rng.random() < spec.nested_prob:
            bits = int(sampler.rng.choice(spec.nested_bits))
        return x, bits

    val = ClipSampler(videos, seed=12345).sample(8, spec.frames, spec.crop).to(dev) if info.main else None
    clips = []
    if info.main and tc.eval_dir and tc.eval_every > 0:
        from .evaluate import load_eval_clips
        clips = load_eval_clips(Path(tc.eval_dir), tc.eval_frames, tc.eval_short_side)

    logf = log = evf = evlog = None
    if info.main:
        logf, log = _open_csv(out / "log.csv", LOG_FIELDS)
        if clips:
            evf, evlog = _open_csv(out / "eval.csv", EVAL_FIELDS)
    use_bf16 = (tc.bf16 and dev.type == "cuda") or (tc.cpu_bf16 and dev.type == "cpu")
    autocast = torch.autocast(dev.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    t_last = clock()
    last_ckpt = elapsed

    def budget_frac(s: int, el: float) -> float:
        """Fraction of the budget spent after ``s`` steps and ``el`` seconds of training."""
        return s / tc.steps if tc.steps > 0 else el / (tc.minutes * 60)

    def done(s: int, el: float) -> bool:
        return s >= tc.steps if tc.steps > 0 else el >= tc.minutes * 60

    def checkpoint():
        if not info.main:
            return
        state = {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                 "step": step, "elapsed": elapsed, "torch_rng": torch.get_rng_state(),
                 "rng": json.dumps(sampler.rng.bit_generator.state) if sampler is not None else ""}
        if use_gan:
            state.update(disc=disc.state_dict(), disc_opt=dopt.state_dict(), lecam=lecam.state_dict())
        save_checkpoint(ckpt, state)
        plot_log(out / "log.csv", out / "losses.png")

    model.train()
    try:
        while not done(step, elapsed) and (stop_at is None or step < stop_at):
            frac = budget_frac(step, elapsed)
            lr = lr_at(tc, step, frac)
            for g in opt.param_groups:
                g["lr"] = lr
            x, bits = next_batch()
            x = x.to(dev, non_blocking=True)
            gan_on = use_gan and step >= w.gan_start
            with autocast:
                recon, q = net(x, bits=bits)
            rec = reconstruction_loss(w, recon.float(), x)
            loss = rec + entropy_weight(w, step) * q.entropy_loss + w.commit * q.commit_loss
            if w.rate:
                loss = loss + w.rate * q.bit_rate
            terms = {}
            if lpips is not None:
                with autocast:
                    lp = lpips(frame_subset(recon, w.perceptual_frames), frame_subset(x, w.perceptual_frames)).mean()
                loss = loss + w.perceptual * lp.float()
                terms["lpips"] = f"{lp.item():.4f}"
            if gan_on:
                from .discriminator import g_adv_loss
                disc.requires_grad_(False)
                with autocast:
                    g_adv = g_adv_loss(disc(recon))
                disc.requires_grad_(True)
                loss = loss + w.gan * g_adv
                terms["g_adv"] = f"{g_adv.item():.4f}"
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, tc.clip)
            opt.step()
            if gan_on:
                from .discriminator import d_hinge_loss
                with autocast:
                    real, fake = disc(x), disc(recon.detach())
                d_loss = d_hinge_loss(real, fake) + w.lecam * lecam(real, fake)
                lecam.update(real, fake)
                dopt.zero_grad(set_to_none=True)
                d_loss.backward()
                average_gradients(disc, info)
                torch.nn.utils.clip_grad_norm_(disc.parameters(), tc.clip)
                dopt.step()
                terms["d_loss"] = f"{d_loss.item():.4f}"
            with torch.no_grad():
                d = min(tc.ema, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(pm, 1 - d)
            step += 1
            now = clock()
            elapsed = broadcast_float(elapsed + now - t_last, info)
            t_last = now
            if info.main and step % tc.log_every == 0:
                with torch.no_grad():
                    vp = psnr(ema(val)[0], val) if step % (tc.log_every * 8) == 0 else float("nan")
                tp = psnr(recon.detach(), x)
                log.writerow({"step": step, "minutes": f"{elapsed / 60:.2f}", "lr": f"{lr:.2e}",
                              "loss": f"{loss.item():.5f}", "psnr": f"{tp:.2f}",
                              "entropy": f"{q.per_sample_entropy.item():.3f}",
                              "codebook_entropy": f"{q.codebook_entropy.item():.3f}",
                              "val_psnr_ema": f"{vp:.2f}", **terms})
                logf.flush()
                print(f"step {step} {elapsed / 60:.1f}min lr {lr:.1e} loss {loss.item():.4f} "
                      f"psnr {tp:.2f} bits={bits} val_ema {vp:.2f}", flush=True)
            if clips and step % tc.eval_every == 0:
                from .evaluate import evaluate
                rates = sorted(set(tc.eval_bits) | {cfg.bits})
                for row in evaluate(ema, clips, rates):
                    evlog.writerow({"step": step, "minutes": f"{elapsed / 60:.2f}", **{k: (f"{v:.4f}" if isinstance(v, float) else v)
                                                     for k, v in row.items()}})
                evf.flush()
            if (elapsed - last_ckpt > tc.ckpt_minutes * 60 or done(step, elapsed)
                    or (tc.ckpt_every > 0 and step % tc.ckpt_every == 0)
                    or (stop_at is not None and step >= stop_at)):
                checkpoint()
                last_ckpt = elapsed
            t_last = clock()  # logging, evaluation and checkpoints do not count against the budget
    finally:
        for fh in (logf, evf):
            if fh is not None:
                fh.close()
    return ema.cpu().eval()
