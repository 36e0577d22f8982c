"""lab/gpu_train.py and lab/gpu_checks.py rehearsed on the CPU: the dry run (stage, the
three device calls' commands with PyAV hidden, import, encode/decode with the imported model),
the weights pieces, the carry budget, the OpenCV decoder and the device-agreement checks."""
import builtins
import json
import shlex
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from neuralcodec import weights
from neuralcodec.configs import CONFIGS
from neuralcodec.video_io import VideoMeta
from neuralcodec.video_out import write_video
from lab.train import data as tdata

from lab import gpu_checks, gpu_lease, gpu_train

ROOT = Path(__file__).resolve().parents[2]


def _video(path: Path, t: int = 12, h: int = 72, w: int = 96, seed: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    fr = np.stack([np.stack([(2 * xx + 3 * k + 40 * seed) % 256, (3 * yy + 2 * k) % 256,
                             (xx + yy + 5 * k) % 256], -1) for k in range(t)]).astype(np.uint8)
    write_video(path, VideoMeta(w, h, Fraction(25), t, "yuv420p"), fr)
    return fr


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    for i in range(2):
        _video(d / f"v{i}.mkv", seed=i)
    return d


def _fails(capsys, fn, argv, *words):
    """``fn(argv)`` through run_main → one line on stderr containing ``words``, status 1."""
    with pytest.raises(SystemExit) as e:
        gpu_lease.run_main("gpu_train", lambda: fn(argv))
    err = capsys.readouterr().err
    assert e.value.code == 1 and err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("gpu_train: error: ") and all(w in err for w in words), err


def fixture_tree(tmp_path):
    """A small stand-in for the working tree that travels with a device call, so that what a
    user keeps in their checkout (a decoded video, say) cannot change a test's verdict."""
    tree = tmp_path / "tree"
    (tree / "pkg").mkdir(parents=True, exist_ok=True)
    (tree / "pkg" / "weights.bin").write_bytes(bytes(1 << 20))
    return tree


def test_tree_size_is_that_of_the_tree_given(tmp_path):
    tree = fixture_tree(tmp_path)
    assert gpu_lease.check_carry([], root=tree)["tree"] == 1 << 20
    (tree / "foreman.mkv").write_bytes(bytes(2 << 20))  # what a user leaves in the checkout counts
    with pytest.raises(gpu_lease.ToolError, match="over the"):
        gpu_lease.check_carry([], limit=2 << 20, root=tree)


def test_dry_run(clips, tmp_path):
    work = tmp_path / "w"
    assert gpu_train.main(["dry-run", "--data", str(clips), "--minutes", "0.05", "--work", str(work),
                           "--tree", str(fixture_tree(tmp_path))]) == 0
    reg = json.loads((work / "models" / "registry.json").read_text())
    (name,) = reg
    assert name.startswith("mgv-dryrun-") and (work / "models" / f"{name}.md").exists()
    card = (work / "models" / f"{name}.md").read_text()
    assert "steps" in card and "CPU" in card and "v0.mkv" in card
    for i in (1, 2, 3):
        assert len(gpu_lease.check_out(work / "machine" / f"out{i}")) <= gpu_lease.OUT_MAX_FILES
    man = json.loads((work / "machine" / "out3" / "manifest.json").read_text())
    assert man["step"] > 0 and man["ended"] == "budget reached" and man["sha256"] == reg[name]["sha256"]
    assert weights.load_model(name, work / "models").cfg == CONFIGS["tiny"]


def test_pieces_round_trip_and_refuse_damage(tmp_path):
    blob = np.random.default_rng(0).integers(0, 256, 40_000, dtype=np.uint8).tobytes()
    (tmp_path / "w.bin").write_bytes(blob)
    out = tmp_path / "out"
    out.mkdir()
    pieces = gpu_lease.split_file(tmp_path / "w.bin", out, piece_bytes=16_384)
    assert [p["size"] for p in pieces] == [16_384, 16_384, 40_000 - 32_768]
    import hashlib
    sha = hashlib.sha256(blob).hexdigest()
    assert gpu_lease.join_pieces(out, pieces, tmp_path / "j.bin", sha, len(blob)).read_bytes() == blob
    bad = bytearray((out / pieces[1]["file"]).read_bytes())
    bad[100] ^= 1
    (out / pieces[1]["file"]).write_bytes(bytes(bad))
    with pytest.raises(gpu_lease.ToolError, match="w.bin.part1: sha256 mismatch"):
        gpu_lease.join_pieces(out, pieces, tmp_path / "j2.bin", sha, len(blob))


def test_import_refuses_a_damaged_piece(tiny, tmp_path, capsys):
    src = tmp_path / "ret"
    src.mkdir()
    w = tmp_path / "t.safetensors"
    sha = weights.save_weights(tiny, w, "mgv-t")
    pieces = gpu_lease.split_file(w, src, piece_bytes=30_000)
    stage = {"data": "x", "short_side": 64, "crf": 16, "clips": [], "train_args": [], "created": "now"}
    (src / "manifest.json").write_text(json.dumps({
        "format": "neuralcodec-gpu-run-1", "name": "mgv-t", "config": "tiny", "file": w.name,
        "size": w.stat().st_size, "sha256": sha, "pieces": pieces, "step": 1, "train_minutes": 0.1,
        "wall_minutes": 0.2, "ended": "budget reached", "hardware": "GPU test", "device": "cuda",
        "versions": "torch", "starts": [], "finished": "now", "stage": stage}))
    p = src / pieces[-1]["file"]
    p.write_bytes(p.read_bytes()[:-1] + b"\0")
    argv = ["import", "--from", str(src), "--models-dir", str(tmp_path / "models")]
    _fails(capsys, gpu_train.main, argv, "sha256 mismatch")
    assert not (tmp_path / "models" / "registry.json").exists()


def test_stage_checks_before_the_lease(clips, tmp_path, capsys):
    dest = tmp_path / "st"
    base = ["stage", "--data", str(clips), "--stage-dir", str(dest), "--checks", "", "--short-side", "64",
            "--recipe-args", shlex.join(gpu_train.DRY_RUN_ARGS)]
    _fails(capsys, gpu_train.main, base + ["--limit-mib", "1"], "over the 1.0 MiB")
    assert not dest.exists()
    _fails(capsys, gpu_train.main, base + ["--recipe-args", "--batchsize 3"], "bad train.py flags")
    _fails(capsys, gpu_train.main, base + ["--recipe-args", "--data /x"], "set on the machine")
    ev = tmp_path / "eval"
    ev.mkdir()
    _fails(capsys, gpu_train.main, ["stage", "--data", str(ev), "--stage-dir", str(dest)], "evaluation data")


def test_cv2_fallback_matches_pyav(tmp_path, monkeypatch):
    pytest.importorskip("cv2")
    src = _video(tmp_path / "v.mkv", t=5, h=64, w=80)
    ref = tdata.decode_video_rgb(tmp_path / "v.mkv", 32)
    real_import = builtins.__import__

    def no_av(name, *a, **kw):
        if name == "av" or name.startswith("av."):
            raise ImportError("no PyAV here")
        return real_import(name, *a, **kw)
    monkeypatch.setattr(builtins, "__import__", no_av)
    got = tdata.decode_video_rgb(tmp_path / "v.mkv", 32)
    full = tdata.decode_video_rgb(tmp_path / "v.mkv", 1000, max_frames=2)
    assert got.shape == ref.shape == (5, 32, 40, 3) and full.shape == (2, 64, 80, 3)
    assert np.abs(got.astype(int) - ref).mean() < 3 and np.abs(full.astype(int) - src[:2]).mean() < 3


def test_gpu_checks_rehearsed_on_cpu(tiny, clips, tmp_path):
    models = tmp_path / "models"
    models.mkdir()
    sha = weights.save_weights(tiny, models / "tiny-test.safetensors", "tiny-test")
    weights.register("tiny-test", "tiny-test.safetensors", sha, models)
    st, out = tmp_path / "checks", tmp_path / "out"
    assert gpu_checks.main(["stage", "--model", "tiny-test", "--models-dir", str(models), "--clip",
                            str(clips / "v0.mkv"), "--frames", "9", "--short-side", "64",
                            "--stage-dir", str(st), "--tree", str(fixture_tree(tmp_path))]) == 0
    assert gpu_checks.main(["remote", "--stage", str(st), "--out", str(out), "--device", "cpu", "--no-bench",
                            "--fps-size", "32x32", "--fps-frames", "5"]) == 0
    assert {p.name for p in out.iterdir()} == {"checks.json", "gpu.mgv", "gpu_frames.npy", "cpu_on_gpu_frames.npy"}
    assert gpu_checks.main(["verify", "--from", str(out), "--stage", str(st)]) == 0
    g = np.load(out / "gpu_frames.npy")
    g[0, 0, 0, 0] ^= 0x80  # a frame far off: the check fails
    np.save(out / "gpu_frames.npy", g)
    assert gpu_checks.main(["verify", "--from", str(out), "--stage", str(st)]) == 1


@pytest.mark.skipif(weights.DEFAULT_MODEL not in weights.registry(), reason="default weights not shipped")
def test_gpu_recipe_warm_starts_from_the_default_model():
    """The GPU recipe's --model/--arch describe the shipped default's architecture, so that its
    --init (the default model) loads on the machine as it is, without growing."""
    tc = gpu_train.check_recipe(list(gpu_train.GPU_RECIPE))  # the tool's own parse and checks
    cfg = tc.tokenizer_config()
    assert tc.init == weights.DEFAULT_MODEL
    assert weights.load_model(weights.DEFAULT_MODEL).cfg == cfg
    assert max(tc.batches.nested_bits) < cfg.bits  # every nested rate is below the full code
