"""Training pipeline on the tiny config: data, losses, LPIPS, discriminator, loop (resume,
nested bits, adversarial), DDP on two CPU processes, evaluation."""
import csv
import io
import os
import pickle
import socket
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from neuralcodec.configs import CONFIGS
from neuralcodec.errors import InputError
from neuralcodec.model import Tokenizer, mask_bits
from lab.train import data as D
from lab.train.discriminator import (DiscriminatorConfig, LeCAM, PatchDiscriminator3D,
                                             d_hinge_loss, g_adv_loss)
from lab.train.evaluate import EvalClip, evaluate
from lab.train.losses import LossWeights, entropy_weight, frame_subset
from lab.train.config import TrainConfig
from lab.train.loop import plot_log, train
from neuralcodec.lpips import LPIPS, lpips_cache_path

ROOT = Path(__file__).resolve().parents[2]


def _write_video(path: Path, frames: int, h: int, w: int, seed: int) -> None:
    import av
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 4, w // 4, 3)).repeat(4, 0).repeat(4, 1).astype(np.uint8)
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        for t in range(frames):
            img = np.roll(base, t, axis=1)
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)


def _write_png(path: Path, h: int, w: int, seed: int) -> None:
    import av
    img = np.random.default_rng(seed).integers(0, 255, (h, w, 3)).astype(np.uint8)
    with av.open(str(path), "w", format="image2") as c:
        s = c.add_stream("png")
        s.width, s.height, s.pix_fmt = w, h, "rgb24"
        for p in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            c.mux(p)
        for p in s.encode():
            c.mux(p)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    (root / "train").mkdir()
    (root / "stills").mkdir()
    _write_video(root / "train" / "a.mp4", 12, 32, 48, 0)
    _write_video(root / "train" / "b.mp4", 10, 40, 32, 1)
    _write_png(root / "stills" / "s1.png", 36, 40, 2)
    _write_png(root / "stills" / "tiny.png", 8, 8, 3)
    (root / "train" / "notes.txt").write_text("not a video")
    D.load_folder(root / "train", root / "cache")  # warm the cache once
    return root


def _tc(corpus, out, **kw):
    base = dict(model="tiny", data=str(corpus / "train"), cache=str(corpus / "cache"), out=str(out),
                batch=2, frames=5, crop=16, image_batch=2, image_crop=16, image_frac=0.3,
                nested_bits=(2, 4), nested_prob=0.5, warmup=2, steps=4, log_every=2, threads=1,
                device="cpu", lr=1e-3)
    base.update(kw)
    return TrainConfig.from_dict(base)


# ---- data -------------------------------------------------------------------------------------
def test_load_folder_and_images(corpus):
    vids = D.load_folder(corpus / "train", corpus / "cache")
    assert [v.shape for v in vids] == [(12, 32, 48, 3), (10, 40, 32, 3)]
    assert all(v.dtype == np.uint8 for v in vids)
    mm = D.load_folder(corpus / "train", corpus / "cache", mmap=True)
    assert isinstance(mm[0], np.memmap) and np.array_equal(mm[0], vids[0])
    with pytest.warns(UserWarning):
        st = D.load_images(corpus / "stills", corpus / "cache", min_size=16)
    assert [s.shape for s in st] == [(1, 36, 40, 3)]
    with pytest.raises(InputError):
        D.load_folder(corpus / "stills", corpus / "cache")
    with pytest.raises(InputError):
        D.load_images(corpus / "nope", corpus / "cache")


def test_clip_sampler_crops_flips_and_seed(corpus):
    vids = D.load_folder(corpus / "train", corpus / "cache")
    a = D.ClipSampler(vids, seed=3).sample(6, 5, 16)
    b = D.ClipSampler(vids, seed=3).sample(6, 5, 16)
    assert a.shape == (6, 3, 5, 16, 16) and torch.equal(a, b)
    assert a.min() >= -1 and a.max() <= 1
    # every crop is a (possibly flipped) window of one of the videos
    for clip in a:
        u8 = ((clip.permute(1, 2, 3, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
        found = False
        for v in vids:
            for cand in (u8, u8[:, :, ::-1]):
                for t0 in range(v.shape[0] - 4):
                    win = v[t0:t0 + 5]
                    hits = np.argwhere((win[0] == cand[0, 0, 0]).all(-1))
                    for y, x in hits:
                        if y + 16 <= win.shape[1] and x + 16 <= win.shape[2] and \
                                np.array_equal(win[:, y:y + 16, x:x + 16], cand):
                            found = True
        assert found
    with pytest.raises(InputError):
        D.ClipSampler(vids).sample(1, 50, 16)


def test_sampler_uses_stills(corpus):
    vids = D.load_folder(corpus / "train", corpus / "cache")
    stills = D.load_images(corpus / "stills", corpus / "cache", min_size=0)[:1]
    s = D.ClipSampler(vids, seed=0, stills=stills, still_frac=1.0)
    x = s.sample_images(3, 20)
    assert x.shape == (3, 3, 1, 20, 20)  # 20 > 32? no: videos allow 20 too; check source below
    u8 = ((x[0, :, 0].permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy()
    img = stills[0][0]
    ok = any(np.array_equal(img[y:y + 20, xx:xx + 20], c) for c in (u8, u8[:, ::-1])
             for y in range(img.shape[0] - 19) for xx in range(img.shape[1] - 19))
    assert ok


def test_batch_stream_workers_are_deterministic_and_ordered(corpus):
    vids = D.load_folder(corpus / "train", corpus / "cache", mmap=True)
    spec = D.BatchSpec(batch=2, frames=5, crop=16, image_frac=0.5, image_batch=3, image_crop=16,
                       nested_bits=(2, 4), nested_prob=0.5)
    loader = D.make_loader(D.BatchStream(spec, vids, seed=7, start=5), workers=2)
    got = [b for _, b in zip(range(6), loader)]
    assert [b["step"] for b in got] == list(range(5, 11))
    for b in got:
        ref = D.make_batch(spec, vids, [], 7, b["step"])
        assert torch.equal(b["x"], ref["x"]) and b["bits"] == ref["bits"]
    shapes = {tuple(b["x"].shape) for b in got}
    assert shapes <= {(2, 3, 5, 16, 16), (3, 3, 1, 16, 16)}
    # ranks share the plan (shape, rate) but not the crops
    r0, r1 = D.make_batch(spec, vids, [], 7, 3, rank=0), D.make_batch(spec, vids, [], 7, 3, rank=1)
    assert r0["x"].shape == r1["x"].shape and r0["bits"] == r1["bits"]
    assert not torch.equal(r0["x"], r1["x"])
    bits = {D.step_plan(spec, 7, i)[1] for i in range(200)}
    assert bits == {None, 2, 4}



def test_clip_frames_caps_the_share_of_long_videos():
    """``clip_frames`` caps how many frames a video's sampling weight counts, in both samplers."""
    long_v = np.zeros((400, 16, 16, 3), np.uint8)            # dark, 400 frames
    short_v = np.full((40, 16, 16, 3), 255, np.uint8)        # bright, 40 frames
    vids = [long_v, short_v]

    def bright_share(xs):
        return float(np.mean([float(x.mean()) > 0 for x in xs]))

    for cap, lo, hi in ((0, 0.0, 0.2), (40, 0.4, 0.6)):
        s = D.ClipSampler(vids, seed=1, clip_frames=cap)
        got = [c for _ in range(50) for c in s.sample(8, 1, 16)]
        assert lo <= bright_share(got) <= hi, (cap, bright_share(got))
        spec = D.BatchSpec(batch=8, frames=1, crop=16, image_frac=0.0, nested_bits=(), clip_frames=cap)
        got = [c for i in range(50) for c in D.make_batch(spec, vids, [], 2, i)["x"]]
        assert lo <= bright_share(got) <= hi, (cap, bright_share(got))

# ---- losses -----------------------------------------------------------------------------------
def test_entropy_weight_schedule():
    w = LossWeights(entropy=0.01, entropy_start_mult=3.0, entropy_decay_steps=2000)
    assert entropy_weight(w, 0) == pytest.approx(0.03)
    assert entropy_weight(w, 1000) == pytest.approx(0.02)
    assert entropy_weight(w, 2000) == pytest.approx(0.01)
    assert entropy_weight(w, 10 ** 6) == pytest.approx(0.01)
    vals = [entropy_weight(w, s) for s in range(0, 2001, 100)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_frame_subset():
    x = torch.arange(9.0).view(1, 1, 9, 1, 1)
    assert frame_subset(x, 3).flatten().tolist() == [0.0, 4.0, 8.0]
    assert frame_subset(x, 0) is x and frame_subset(x, 20) is x


# ---- LPIPS ------------------------------------------------------------------------------------
def test_convert_lpips_refuses_foreign_pickles_and_transposes():
    from lab import convert_lpips as C

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with pytest.raises(pickle.UnpicklingError):
        C.read_ckpt(pickle.dumps(Evil()))
    k = np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)  # kh×kw×I×O
    tree = {"AlexNet_0": {f"Conv_{i}": {"kernel": k, "bias": np.zeros(5, np.float32)} for i in range(5)}}
    tree.update({f"NetLinLayer_{j}": {"Conv_0": {"kernel": np.ones((1, 1, 7, 1), np.float32)}} for j in range(5)})
    out = C.convert(C.read_ckpt(pickle.dumps(tree)), "alexnet")
    assert out["net.0.weight"].shape == (5, 4, 3, 3)
    assert out["net.0.weight"][2, 1, 0, 2] == k[0, 2, 1, 2]
    assert out["lin.3.weight"].shape == (1, 7, 1, 1)


@pytest.mark.skipif(not lpips_cache_path("vgg16").exists(), reason="run python -m lab.convert_lpips first")
def test_lpips_vgg():
    m = LPIPS("vgg16")
    torch.manual_seed(0)
    x = torch.nn.functional.interpolate(torch.rand(2, 3, 8, 8) * 2 - 1, size=64, mode="bilinear")
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    noise = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1)
    assert torch.allclose(m(x, x), torch.zeros(2))
    assert (m(x, blur) < m(x, noise)).all()
    assert torch.allclose(m(x, noise), m(noise, x), atol=1e-5)
    v = x.unsqueeze(2).repeat(1, 1, 3, 1, 1)  # B×3×T×H×W → per frame
    assert m(v, v).shape == (6,)
    y = blur.clone().requires_grad_(True)
    m(x, y).sum().backward()
    assert y.grad.abs().sum() > 0 and all(p.grad is None for p in m.parameters())


def test_lpips_missing_weights_is_model_error(tmp_path):
    from neuralcodec.errors import ModelError
    with pytest.raises(ModelError):
        LPIPS("vgg16", path=tmp_path / "none.safetensors")


# ---- discriminator ----------------------------------------------------------------------------
def test_discriminator_shapes_and_losses():
    d = PatchDiscriminator3D(DiscriminatorConfig(channels=8, layers=2, groups=4))
    assert d(torch.zeros(2, 3, 5, 32, 32)).shape == (2, 1, 5, 6, 6)  # 32 →16 →8 →7 →6 (4×4 kernels)
    assert d(torch.zeros(2, 3, 1, 32, 32)).shape == (2, 1, 1, 6, 6)
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert d_hinge_loss(real, fake).item() == pytest.approx((0 + 0.5) / 2 + (0 + 1) / 2)
    assert g_adv_loss(fake).item() == pytest.approx(1.0)
    lc = LeCAM(decay=0.5)
    lc.update(real, fake)
    assert lc.ema_real.item() == pytest.approx(1.25) and lc.ema_fake.item() == pytest.approx(-1.0)
    # relu(real - ema_fake)² = (3, 1.5)², relu(ema_real - fake)² = (3.25, 1.25)²
    want = (9 + 2.25) / 2 + (3.25 ** 2 + 1.25 ** 2) / 2
    assert lc(real, fake).item() == pytest.approx(want)
    lc.update(torch.tensor([0.25]), torch.tensor([0.0]))
    assert lc.ema_real.item() == pytest.approx(0.75)


# ---- loop -------------------------------------------------------------------------------------
def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("workers", [0, 1])
def test_exact_resume(corpus, tmp_path, workers):
    full = train(_tc(corpus, tmp_path / "full", workers=workers))
    tc = _tc(corpus, tmp_path / "half", workers=workers)
    train(tc, stop_at=2)
    st = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert st["step"] == 2
    resumed = train(tc)
    assert _same(full.state_dict(), resumed.state_dict())
    a = torch.load(tmp_path / "full" / "checkpoint.pt", weights_only=True)
    b = torch.load(tmp_path / "half" / "checkpoint.pt", weights_only=True)
    assert a["step"] == b["step"] == 4 and _same(a["model"], b["model"])
    # the run actually trained: weights moved
    init = Tokenizer(CONFIGS["tiny"])
    assert not _same(init.state_dict(), a["model"])
    log = (tmp_path / "half" / "log.csv").read_text().splitlines()
    assert log[0].startswith("step,minutes") and [r.split(",")[0] for r in log[1:]] == ["2", "4"]


def test_old_checkpoint_keys_resume(corpus, tmp_path):
    """A checkpoint with only the original keys (and an old log header) resumes."""
    tc = _tc(corpus, tmp_path / "old", steps=3)
    train(tc, stop_at=1)
    p = tmp_path / "old" / "checkpoint.pt"
    st = torch.load(p, weights_only=True)
    assert set(st) == {"model", "ema", "opt", "step", "elapsed", "rng", "torch_rng"}
    (tmp_path / "old" / "log.csv").write_text("step,minutes,lr,loss,psnr,entropy,codebook_entropy,val_psnr_ema\n")
    train(tc)
    assert torch.load(p, weights_only=True)["step"] == 3
    rows = (tmp_path / "old" / "log.csv").read_text().splitlines()
    assert all(len(r.split(",")) == 8 for r in rows)


def test_adversarial_and_perceptual_step(corpus, tmp_path):
    lw = LossWeights(gan=0.1, gan_start=1, lecam=0.01,
                     perceptual=0.1 if lpips_cache_path("alexnet").exists() else 0.0,
                     perceptual_net="alexnet")
    tc = _tc(corpus, tmp_path / "gan", steps=3, loss=lw, disc_channels=8, disc_layers=2, log_every=1,
             crop=32, image_crop=32, frames=5)
    train(tc, stop_at=2)
    st = torch.load(tmp_path / "gan" / "checkpoint.pt", weights_only=True)
    assert {"disc", "disc_opt", "lecam"} <= set(st) and bool(st["lecam"]["started"])
    train(tc)
    header = (tmp_path / "gan" / "log.csv").read_text().splitlines()
    assert "g_adv" in header[0] and header[2].split(",")[9] != ""  # step 2: adversarial on


def test_nested_bits_step_and_per_rate_eval():
    torch.manual_seed(0)
    m = Tokenizer(CONFIGS["tiny"])
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    recon, q = m(x, bits=3)
    assert (mask_bits(q.codes, 3)[:, 3:] == 0).all() and (mask_bits(q.codes, 3)[:, :3].abs() == 1).all()
    (recon - x).pow(2).mean().backward()
    enc_grad = m.encoder.out.weight.grad
    assert enc_grad[:3].abs().sum() > 0 and enc_grad[3:].abs().sum() == 0  # dropped bits get no rec. grad
    clip = EvalClip("c", torch.rand(1, 3, 5, 18, 22) * 2 - 1)
    rows = evaluate(m, [clip], [2, 4])
    assert [r["bits"] for r in rows] == [6, 4, 2]
    # 5 frames → 2 latents of 5×6 tokens (18×22 padded to 20×24)
    assert rows[0]["bpp"] == pytest.approx(6 * 2 * 5 * 6 / (5 * 18 * 22))
    assert rows[2]["bpp"] == pytest.approx(rows[0]["bpp"] / 3)
    assert all(np.isfinite(r["psnr"]) for r in rows)
    assert 0 <= rows[0]["bit_usage"] <= 1 and 0 <= rows[0]["token_entropy"] <= rows[0]["bit_entropy"] + 1e-9
    assert m.training  # evaluate restores the mode


def test_periodic_eval_and_plot(corpus, tmp_path):
    tc = _tc(corpus, tmp_path / "ev", steps=2, eval_dir=str(corpus / "train"), eval_every=2,
             eval_frames=5, eval_short_side=32, eval_bits=(2,))
    train(tc)
    rows = (tmp_path / "ev" / "eval.csv").read_text().splitlines()
    assert rows[0].startswith("step,minutes,bits,bpp,psnr") and [r.split(",")[2] for r in rows[1:]] == ["6", "2"]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not plot_log(tmp_path / "ev" / "log.csv", tmp_path / "p.png")
    else:
        assert plot_log(tmp_path / "ev" / "log.csv", tmp_path / "p.png") and (tmp_path / "p.png").stat().st_size


def test_cli_flags(corpus, tmp_path, monkeypatch):
    from lab.train import __main__ as cli
    out = tmp_path / "cli"
    monkeypatch.setattr(sys, "argv", ["train.py", "--model", "tiny", "--data", str(corpus / "train"),
                                      "--cache", str(corpus / "cache"), "--out", str(out), "--steps", "1",
                                      "--batch", "1", "--frames", "5", "--crop", "16", "--image-crop", "16",
                                      "--nested-bits", "2,4", "--entropy", "0.02", "--threads", "1",
                                      "--device", "cpu", "--bf16", "false"])
    cli.main()
    import json
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["batches"]["nested_bits"] == [2, 4] and cfg["loss"]["entropy"] == 0.02 and cfg["bf16"] is False
    assert TrainConfig.from_dict(cfg).loss.entropy == 0.02


# ---- DDP --------------------------------------------------------------------------------------
def _ddp_worker(rank, world, port, tc_dict, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    ema = train(TrainConfig.from_dict(tc_dict))
    torch.save(ema.state_dict(), Path(out) / f"rank{rank}.pt")


@pytest.mark.slow  # two spawned interpreters importing torch: ~30 s on 2 busy cores
def test_ddp_two_cpu_processes_stay_in_sync(corpus, tmp_path):
    from dataclasses import asdict
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    tc = _tc(corpus, tmp_path / "ddp", steps=3)
    mp.spawn(_ddp_worker, args=(2, port, asdict(tc), str(tmp_path)), nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt", weights_only=True)
    b = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert _same(a, b)
    assert not _same(a, Tokenizer(CONFIGS["tiny"]).state_dict())
    ck = torch.load(tmp_path / "ddp" / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 3 and ck["rng"] == ""


def test_warm_start_from_weights(corpus, tmp_path):
    """--init loads a weights file into model and EMA; a config mismatch is refused."""
    from neuralcodec.weights import save_weights
    torch.manual_seed(3)
    start = Tokenizer(CONFIGS["tiny"])
    path = tmp_path / "start.safetensors"
    save_weights(start, path, "start")
    # fp16 round trip is what the run starts from
    ref = {k: v.half().float() for k, v in start.state_dict().items()}
    got = train(_tc(corpus, tmp_path / "warm", init=str(path), steps=1, lr=1e-12, warmup=1))
    for k, v in got.state_dict().items():
        assert torch.allclose(v, ref[k], atol=1e-5), k
    cold = train(_tc(corpus, tmp_path / "cold", steps=1, lr=1e-12, warmup=1))
    assert not _same(cold.state_dict(), got.state_dict())
    with pytest.raises(InputError):
        train(_tc(corpus, tmp_path / "bad", init=str(path), model="default", steps=1))


def test_cpu_bf16_training_step(corpus, tmp_path):
    """--cpu-bf16 trains under bf16 autocast on CPU: weights stay float32, finite, and move."""
    out = train(_tc(corpus, tmp_path / "bf16", cpu_bf16=True, steps=2))
    start = Tokenizer(CONFIGS["tiny"])
    sd = out.state_dict()
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in sd.values())
    assert not _same(start.state_dict(), sd)
    loss = [float(r.split(",")[3]) for r in (tmp_path / "bf16" / "log.csv").read_text().splitlines()[1:]]
    assert loss and all(np.isfinite(loss))


# ---- study features: arch overrides, CPU-time budget, image-first, bit growth, load_run -----------
def test_arch_override_and_load_run(corpus, tmp_path):
    """--arch overrides fields of the named config; load_run rebuilds that architecture from the
    run folder (train_config.json + checkpoint) and returns the EMA weights."""
    from lab.train.loop import load_run
    out = tmp_path / "arch"
    ema = train(_tc(corpus, out, arch='{"bits": 8}', nested_bits=(2, 6), steps=2))
    assert ema.cfg.bits == 8 and ema.cfg == replace(CONFIGS["tiny"], bits=8)
    back = load_run(out)
    assert back.cfg == ema.cfg and back.step == 2
    assert _same(back.state_dict(), ema.state_dict())
    for bad in ('{"bitz": 8}', "[1]", "{not json", '{"bits": 99}'):
        with pytest.raises(InputError):
            train(_tc(corpus, tmp_path / "bad", arch=bad, steps=1))
    with pytest.raises(InputError):
        load_run(tmp_path / "nothing-here")


def test_cpu_clock_budget(corpus, tmp_path):
    """clock="cpu" budgets by this process's CPU time: the run stops once it has used the
    minutes (a sleeping process would not use them), and elapsed is CPU time, not wall time."""
    import time as _time
    from lab.train.loop import make_clock
    assert make_clock("cpu") is _time.process_time and make_clock("wall") is _time.time
    with pytest.raises(InputError):
        make_clock("sundial")
    out = tmp_path / "cpu"
    t0, c0 = _time.time(), _time.process_time()
    train(_tc(corpus, out, steps=0, minutes=0.02, clock="cpu", log_every=1))
    used = _time.process_time() - c0
    st = torch.load(out / "checkpoint.pt", weights_only=True)
    assert 1.2 <= st["elapsed"] <= used + 0.5 and st["step"] >= 1
    assert _time.time() - t0 >= st["elapsed"] * 0.5


def test_image_first_curriculum(corpus, tmp_path, monkeypatch):
    """image_first = f: the first f of the budget trains on image (1-frame) batches only."""
    frames = []
    orig = Tokenizer.forward

    def fwd(self, video, bits=None):
        frames.append(video.shape[2])
        return orig(self, video, bits=bits)

    monkeypatch.setattr(Tokenizer, "forward", fwd)
    train(_tc(corpus, tmp_path / "if", steps=8, image_first=0.5, image_frac=0.0, log_every=100))
    assert frames == [1] * 4 + [5] * 4
    with pytest.raises(InputError):
        train(_tc(corpus, tmp_path / "ifw", steps=2, image_first=0.5, workers=1))


def test_grow_bits_keeps_the_old_code(corpus, tmp_path):
    """A model grown from K to K' bits encodes the same first K bits and decodes them (with the
    new bits present or dropped) exactly as before; --init grows automatically."""
    from lab.train.surgery import grow_bits
    from neuralcodec.weights import save_weights
    torch.manual_seed(1)
    small = Tokenizer(CONFIGS["tiny"]).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.1 * torch.randn_like(p))
    big = grow_bits(small, 10).eval()
    assert big.cfg.bits == 10
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    cs, cb = small.encode(x), big.encode(x)
    assert torch.equal(cb[:, :6], cs)
    assert torch.equal(big.decode(cb, bits=6), small.decode(cs))
    assert torch.allclose(big.decode(cb), small.decode(cs), atol=1e-6)
    assert not torch.equal(cb[:, 6:], torch.ones_like(cb[:, 6:]))  # the new bits carry something
    with pytest.raises(InputError):
        grow_bits(big, 6)
    path = tmp_path / "small.safetensors"
    save_weights(small, path, "small")
    got = train(_tc(corpus, tmp_path / "grow", init=str(path), arch='{"bits": 10}', steps=1,
                    nested_bits=(6,), lr=1e-12, warmup=1))
    assert got.cfg.bits == 10


def test_grow_bits_adds_a_bit_plane_to_a_planes_model(corpus, tmp_path):
    """A sign-magnitude "planes" model grows by a whole plane of its channels (6 → 9 bits: 3
    channels × 2 → 3 planes): the encoder is kept as it is, the first 6 bits and their decoding
    are unchanged, the new plane is the finer residual of the same channels and the decoder
    ignores it until trained; --init grows automatically, a plane count that would change the
    channels is refused."""
    from lab.train.surgery import grow_bits, grown_config, init_weights
    from neuralcodec.weights import save_weights
    torch.manual_seed(2)
    cfg = replace(CONFIGS["tiny"], quantizer="planes", planes=2, sign_magnitude=True)
    small = Tokenizer(cfg).eval()
    with torch.no_grad():
        for p in small.parameters():
            p.add_(0.1 * torch.randn_like(p))
    big = grow_bits(small, 9).eval()
    assert big.cfg == grown_config(cfg, 9) == replace(cfg, bits=9, planes=3)
    assert big.cfg.latent_channels == cfg.latent_channels == 3
    assert torch.equal(big.encoder.out.weight, small.encoder.out.weight)
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    cs, cb = small.encode(x), big.encode(x)
    assert torch.equal(cb[:, :6], cs)
    assert torch.equal(big.decode(cb, bits=6), small.decode(cs))
    assert torch.allclose(big.decode(cb), small.decode(cs), atol=1e-6)
    with torch.no_grad():  # plane 3 refines: the 9-bit values are nearer the encoder's
        v = torch.tanh(big.encoder(big.pad_video(x)))
        err6 = (big.quantizer.values(cb[:, :6]) - v).abs()
        err9 = (big.quantizer.values(cb) - v).abs()
    assert err6.max() <= 0.25 + 1e-6 and err9.max() <= 0.125 + 1e-6  # half a cell of 4, 8 levels
    assert err9.mean() < err6.mean()
    for bad in (6, 8):
        with pytest.raises(InputError):
            grow_bits(small, bad)
    path = tmp_path / "small.safetensors"
    save_weights(small, path, "small")
    with pytest.raises(InputError):  # 12 bits of 3 channels are 4 planes, not 3
        init_weights(str(path), replace(cfg, bits=12, planes=3))
    got = train(_tc(corpus, tmp_path / "growp", init=str(path),
                    arch='{"quantizer": "planes", "planes": 3, "bits": 9, "sign_magnitude": true}',
                    steps=1, nested_bits=(6,), lr=1e-12, warmup=1))
    assert got.cfg == big.cfg


def test_change_factors_folds_and_grows_the_upsamplers(corpus, tmp_path):
    """A model warm-started under other down-sampling factors copies every weight; the decoder
    Upsample whose factor is dropped averages its sub-pixel output channels (and the factorized
    temporal conv sums the inputs it reads from them); adding the factor back repeats them, so
    drop ∘ add is the identity. --init uses it automatically."""
    from dataclasses import replace
    from lab.train.surgery import change_factors
    from neuralcodec.weights import save_weights
    torch.manual_seed(2)
    a = Tokenizer(CONFIGS["tiny"]).eval()  # spatial ×2 at the first transition
    cfg_b = replace(a.cfg, spatial_down=(False, True))  # ... at the second instead
    b = change_factors(a, cfg_b)
    assert b.cfg == cfg_b and b.cfg.spatial_factor == a.cfg.spatial_factor
    sa, sb = a.state_dict(), b.state_dict()
    up = "decoder.ups.1.conv.body."  # the last one: level 1 → 0, ×2 in space under a only
    for k in sa:
        if not k.startswith("decoder.ups."):
            assert torch.equal(sa[k], sb[k]), k
    cout = a.decoder.ups[1].cout
    st = a.decoder.ups[1].st
    w = sa[up + "0.conv.weight"]  # (cout·2·2·st)×cin×1×3×3, channel ((c·2 + i)·2 + j)·st + s
    want = w.reshape(cout, 4, st, *w.shape[1:]).mean(1).reshape(cout * st, *w.shape[1:])
    assert torch.allclose(sb[up + "0.conv.weight"], want)
    wt = sa[up + "1.conv.weight"]
    want_t = wt.reshape(cout, 4, st, cout, 4, st, *wt.shape[2:]).mean(1).sum(3)
    assert torch.allclose(sb[up + "1.conv.weight"], want_t.reshape(cout * st, cout * st, *wt.shape[2:]))
    grown = "decoder.ups.0.conv.body.0.conv.weight"  # level 2 → 1: ×2 in space under b only
    assert sb[grown].shape[0] == 4 * sa[grown].shape[0]
    back = change_factors(b, a.cfg).state_dict()  # ups.0: grown, then folded again = identity
    for k in sa:
        if not k.startswith("decoder.ups.1."):  # (folded, then grown: repeated means)
            assert torch.allclose(back[k], sa[k], atol=1e-6), k
    x = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert b.decode(b.encode(x)).shape == x.shape
    with pytest.raises(InputError):
        change_factors(a, replace(a.cfg, bits=7))
    with pytest.raises(InputError):  # other levels: refused, not a ValueError from the config
        change_factors(a, CONFIGS["default"])
    path = tmp_path / "a.safetensors"
    save_weights(a, path, "a")
    got = train(_tc(corpus, tmp_path / "fold", init=str(path),
                    arch='{"spatial_down": [false, true]}', steps=1, lr=1e-12, warmup=1))
    assert got.cfg.spatial_down == (False, True)


def test_export_uses_the_run_config(corpus, tmp_path, monkeypatch):
    """lab/export.py rebuilds the run's architecture from train_config.json (arch overrides);
    --set changes a field that keeps the weights (the same tensors under sign-magnitude planes);
    a --set the config refuses stops with one line."""
    import subprocess
    out = tmp_path / "exp"
    train(_tc(corpus, out, arch='{"bits": 8, "quantizer": "planes", "planes": 2}', nested_bits=(2,), steps=1))
    models = tmp_path / "models"
    models.mkdir()
    (models / "registry.json").write_text("{}")
    code = ("import sys, runpy; from pathlib import Path; import neuralcodec.weights as w; "
            f"w.MODELS_DIR = Path({str(models)!r}); w.REGISTRY_FILE = w.MODELS_DIR / 'registry.json'; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    for name, extra in (("grown-test", []), ("sm-test", ["--set", '{"sign_magnitude": true}'])):
        r = subprocess.run([sys.executable, "-c", code, str(ROOT / "lab" / "export.py"),
                            str(out / "checkpoint.pt"), "--name", name] + extra,
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    from neuralcodec.weights import load_weights_file
    m, sm = (load_weights_file(models / f"{n}.safetensors") for n in ("grown-test", "sm-test"))
    assert m.cfg.bits == 8 and not m.cfg.sign_magnitude and sm.cfg.sign_magnitude
    assert all(torch.equal(a, b) for a, b in zip(m.state_dict().values(), sm.state_dict().values()))
    assert "grown-test" in (models / "registry.json").read_text()
    # a --set the config refuses (unknown field): one error line, nothing written or registered
    r = subprocess.run([sys.executable, "-c", code, str(ROOT / "lab" / "export.py"),
                        str(out / "checkpoint.pt"), "--name", "bad-test", "--set", '{"bitz": 8}'],
                       capture_output=True, text=True)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == [r.stderr.strip()] and "bitz" in r.stderr
    assert not (models / "bad-test.safetensors").exists() and "bad-test" not in (models / "registry.json").read_text()


def test_partial_warm_start_keeps_matching_tensors(tmp_path):
    """--init-partial: encoder and quantizer of a model come over under a wider decoder; the
    decoder's changed tensors keep their random init; nothing matching is refused."""
    from lab.train.surgery import init_weights
    from neuralcodec.weights import save_weights
    torch.manual_seed(5)
    start = Tokenizer(CONFIGS["tiny"])
    path = tmp_path / "start.safetensors"
    save_weights(start, path, "start")
    wide = replace(CONFIGS["tiny"], dec_channels=(8, 12, 16))
    with pytest.raises(InputError):
        init_weights(str(path), wide)
    got = init_weights(str(path), wide, partial=True)
    src = start.state_dict()
    enc = [k for k in src if k.startswith("encoder.")]
    assert enc and all(torch.allclose(got.state_dict()[k], src[k].half().float()) for k in enc)
    assert got.copied >= len(enc) and got.fresh > 0
    changed = [k for k, v in got.state_dict().items() if k in src and v.shape != src[k].shape]
    assert changed and all(k.startswith("decoder.") for k in changed)
    other = replace(CONFIGS["tiny"], enc_channels=(4, 4, 4), dec_channels=(4, 4, 4), stem_patch=1)
    with pytest.raises(InputError):
        init_weights(str(path), replace(other, bits=2, norm_groups=2), partial=True)


def test_decoder_only_training_keeps_the_code(corpus, tmp_path):
    """train_only="decoder" (VidTok's second stage): the encoder and quantizer of the start model
    stay bit-exact — so are the tokens of every stream — while the decoder learns; it needs a start
    model, and an unknown value is refused."""
    from neuralcodec.weights import save_weights
    torch.manual_seed(5)
    start = Tokenizer(CONFIGS["tiny"])
    path = tmp_path / "start.safetensors"
    save_weights(start, path, "start")
    ref = {k: v.half().float() for k, v in start.state_dict().items()}
    got = train(_tc(corpus, tmp_path / "dec", init=str(path), train_only="decoder", steps=3, ema=0.0))
    sd = got.state_dict()
    enc = [k for k in sd if not k.startswith("decoder.")]
    dec = [k for k in sd if k.startswith("decoder.")]
    assert enc and dec
    assert all(torch.equal(sd[k], ref[k]) for k in enc)
    assert any(not torch.allclose(sd[k], ref[k]) for k in dec)
    with pytest.raises(InputError):
        train(_tc(corpus, tmp_path / "cold", train_only="decoder", steps=1))
    with pytest.raises(InputError):
        train(_tc(corpus, tmp_path / "bad", init=str(path), train_only="encoder", steps=1))


def test_rate_term_trains_and_is_logged_off_by_default(corpus, tmp_path):
    """LossWeights.rate adds LFQ's marginal bit rate to the loss (0 = off, the default)."""
    assert LossWeights().rate == 0.0
    out = train(_tc(corpus, tmp_path / "rate", steps=2, loss=LossWeights(rate=0.05)))
    assert all(torch.isfinite(v).all() for v in out.state_dict().values())


def test_bit_plane_model_trains_from_an_lfq_start(corpus, tmp_path):
    """The recipe of the "planes" models: an LFQ model's weights start a bit-plane model
    (--init-partial: everything but the encoder's output layer and its shortcut), which then
    trains; its nested rates are the planes, and the run folder rebuilds it."""
    from lab.train.loop import load_run
    from lab.train.surgery import init_weights
    from neuralcodec.weights import save_weights
    torch.manual_seed(5)
    path = tmp_path / "lfq.safetensors"
    save_weights(Tokenizer(CONFIGS["tiny"]), path, "lfq")
    planes = replace(CONFIGS["tiny"], quantizer="planes", planes=2)
    got = init_weights(str(path), planes, partial=True)
    src = Tokenizer(CONFIGS["tiny"]).state_dict()
    fresh = sorted(k for k, v in got.state_dict().items() if k not in src or src[k].shape != v.shape)
    assert fresh == ["encoder.out.bias", "encoder.out.weight", "encoder.skip.bias", "encoder.skip.weight"]
    out = tmp_path / "planes"
    ema = train(_tc(corpus, out, arch='{"quantizer": "planes", "planes": 2}', init=str(path),
                    init_partial=True, nested_bits=(3,), steps=30, log_every=1, lr=3e-3))
    assert ema.cfg == planes
    rows = list(csv.DictReader(open(out / "log.csv")))
    first = np.mean([float(r["loss"]) for r in rows[:5]])
    last = np.mean([float(r["loss"]) for r in rows[-5:]])
    assert last < first
    back = load_run(out)
    assert back.cfg == planes and _same(back.state_dict(), ema.state_dict())
