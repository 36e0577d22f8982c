"""The ``mgv`` command line, through click's CliRunner (tiny model patched in) and through a
real ``python -m neuralcodec`` subprocess (registered default model): encode → info → decode,
fps and frame count survive, overwrite refusal, bad inputs, truncated streams, one-line
errors, and interrupted or failing writes that leave no file behind."""
import copy
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from neuralcodec import cli, codec, weights
from neuralcodec import container as ct
from neuralcodec import video_io as vio
from neuralcodec import video_out as vout
from neuralcodec.configs import CONFIGS
from neuralcodec.model import Tokenizer

ROOT = Path(__file__).resolve().parents[1]
RATE = Fraction(30000, 1001)


@pytest.fixture(scope="module")
def tiny(make_tiny):
    return make_tiny(0.05)


@pytest.fixture
def runner(tiny, monkeypatch):
    def load(name=weights.DEFAULT_MODEL):
        if name != "tiny-test" and name != weights.DEFAULT_MODEL:
            raise weights.WeightsError(f"unknown model '{name}'")
        return copy.deepcopy(tiny)  # a fresh model per load, as the real loader gives

    monkeypatch.setattr(weights, "load_model", load)
    return CliRunner()


def make_video(path, t=9, w=48, h=40, rate=RATE):
    """A synthetic moving gradient, FFV1 in .mkv (no frame count in the container)."""
    c = av.open(str(path), "w")
    s = c.add_stream("ffv1", rate=rate)
    s.width, s.height, s.pix_fmt = w, h, "yuv420p"
    y, x = np.mgrid[0:h, 0:w]
    for i in range(t):
        a = np.stack([(x * 5 + i * 10) % 256, (y * 6) % 256, (x + y + i) % 256], -1).astype(np.uint8)
        f = av.VideoFrame.from_ndarray(a, format="rgb24")
        f.pts = i
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def leftovers(d: Path):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("."))


def one_error_line(result, code):
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mgv: error: "), result.stderr
    assert "Traceback" not in result.output
    return err[0]


def refused(runner, args, out: Path, word: str) -> str:
    """Run a command that must be refused: exit 3, one error line that names ``word``, no
    ``out`` and no temporary file left beside it → the error line."""
    line = one_error_line(runner.invoke(cli.main, args), 3)
    assert word in line and not out.exists() and not leftovers(out.parent), line
    return line


def test_encode_info_decode(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv")
    mgv = tmp_path / "out.mgv"
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "--segment-frames", "5", "-q"])
    assert r.exit_code == 0, r.output
    assert "bpp" in r.stdout and "9 frames 48x40 @ 30000/1001" in r.stdout
    r = runner.invoke(cli.main, ["info", str(mgv), "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["header"]["frames"] == 9 and d["header"]["fps"] == "30000/1001"
    assert d["header"]["model_name"] == "tiny-test" and len(d["segments"]) == 2
    assert d["file_bytes"] == mgv.stat().st_size
    r = runner.invoke(cli.main, ["info", str(mgv)])
    assert r.exit_code == 0 and "model_name" in r.stdout and "segments: 2" in r.stdout
    out = tmp_path / "dec.mkv"
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out)])
    assert r.exit_code == 0, r.output
    m = vio.probe(out)
    assert (m.width, m.height, m.fps, m.pix_fmt) == (48, 40, RATE, "yuv420p")
    assert sum(1 for _ in vio.read_frames(out)) == 9
    assert leftovers(tmp_path) == []
    # a frame range, into PNG files
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "f_%03d.png"), "--frames", "2:5", "-q"])
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.glob("f_*.png")) == ["f_001.png", "f_002.png", "f_003.png"]
    assert leftovers(tmp_path) == []


def test_overwrite_refused_without_y(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv", t=1)
    mgv = tmp_path / "out.mgv"
    mgv.write_bytes(b"keep me")
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q"])
    assert "exists" in one_error_line(r, 4)
    assert mgv.read_bytes() == b"keep me"
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q", "-y"])
    assert r.exit_code == 0 and mgv.read_bytes()[:4] == b"\x89MGV"
    out = tmp_path / "o.mp4"
    out.write_bytes(b"keep")
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out), "-q"])
    one_error_line(r, 4)
    assert out.read_bytes() == b"keep"
    (tmp_path / "p_001.png").write_bytes(b"keep")
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "p_%03d.png"), "-q"])
    one_error_line(r, 4)
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("content", [b"", b"hello, this is not a video\n" * 40, None])
def test_bad_input_files(runner, tmp_path, content):
    src = tmp_path / "bad.mp4"
    if content is not None:
        src.write_bytes(content)
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "o.mgv"), "-q"])
    one_error_line(r, 3)
    assert not (tmp_path / "o.mgv").exists() and leftovers(tmp_path) == []


def test_bad_streams_and_options(runner, tmp_path):
    src = make_video(tmp_path / "in.mkv", t=5)
    mgv = tmp_path / "a.mgv"
    assert runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q"]).exit_code == 0
    data = mgv.read_bytes()
    cut = tmp_path / "cut.mgv"
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.mkv"
    # a cut stream: the lost segment is concealed (mid-grey: nothing before it), reported, exit 2
    for cmd in (["decode", str(cut), "-o", str(out), "-q"], ["info", str(cut)]):
        r = runner.invoke(cli.main, cmd)
        assert r.exit_code == 2, r.output
        err = r.stderr.strip().splitlines()
        assert err[0].startswith("mgv: damaged: frames 0-4 concealed (segment 0 damaged: "), err
        assert err[-1].startswith("mgv: error: damaged stream") and len(err) == 2
    assert sum(1 for _ in vio.read_frames(out)) == 5
    assert np.abs(next(vio.read_frames(out)).astype(int) - 128).max() <= 2
    out.unlink()
    assert leftovers(tmp_path) == []
    (tmp_path / "x.mgv").write_bytes(b"RIFF....")
    assert "magic" in one_error_line(runner.invoke(cli.main, ["info", str(tmp_path / "x.mgv")]), 2)
    one_error_line(runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "o.avi")]), 4)
    one_error_line(runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out), "--frames", "x"]), 3)
    one_error_line(runner.invoke(cli.main, ["decode", str(mgv), "-o", str(out), "--frames", "9:20"]), 3)
    one_error_line(runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"), "--bits", "99"]), 3)
    one_error_line(runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"), "--model", "nope"]), 5)
    one_error_line(runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"),
                                            "--segment-frames", "4"]), 3)
    one_error_line(runner.invoke(cli.main, ["info", str(tmp_path / "missing.mgv")]), 3)
    assert leftovers(tmp_path) == []


def test_interrupted_or_failing_writes_leave_nothing(runner, tmp_path, monkeypatch):
    src = make_video(tmp_path / "in.mkv", t=5)
    mgv = tmp_path / "a.mgv"
    assert runner.invoke(cli.main, ["encode", str(src), "-o", str(mgv), "-q"]).exit_code == 0

    def interrupted(*a, progress=None, **kw):
        progress(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(vout, "write_video", interrupted)
    r = runner.invoke(cli.main, ["decode", str(mgv), "-o", str(tmp_path / "o.mkv"), "-q"])
    assert "interrupted" in one_error_line(r, 130)
    monkeypatch.setattr(codec, "compress_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "b.mgv"), "-q"])
    assert "No space left" in one_error_line(r, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mgv", "in.mkv"]


# ---- real subprocess with the registered default model ----------------------------------------
needs_default = pytest.mark.skipif(weights.DEFAULT_MODEL not in weights.registry(),
                                   reason="default model not registered")


def mgv(*args, cwd, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "neuralcodec", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300, **kw)


@needs_default
@pytest.mark.slow
def test_subprocess_encode_info_decode(tmp_path):
    make_video(tmp_path / "in.mkv")
    r = mgv("encode", "in.mkv", "-o", "a.mgv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "9 frames 48x40 @ 30000/1001" in r.stdout and "bpp" in r.stdout
    r = mgv("info", "a.mgv", "--json", cwd=tmp_path)
    assert r.returncode == 0 and json.loads(r.stdout)["header"]["model_name"] == weights.DEFAULT_MODEL
    r = mgv("decode", "a.mgv", "-o", "out.mp4", "-q", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    m = vio.probe(tmp_path / "out.mp4")
    assert (m.fps, m.width, m.height) == (RATE, 48, 40)
    assert sum(1 for _ in vio.read_frames(tmp_path / "out.mp4")) == 9
    r = mgv("decode", "a.mgv", "-o", "out.mp4", "-q", cwd=tmp_path)  # exists: refused
    assert r.returncode == 4 and r.stderr.startswith("mgv: error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert leftovers(tmp_path) == []


@needs_default
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_subprocess_interrupted_encode_leaves_nothing(tmp_path, sig):
    make_video(tmp_path / "in.mkv", t=400, w=64, h=64)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    p = subprocess.Popen([sys.executable, "-m", "neuralcodec", "encode", "in.mkv", "-o", "a.mgv"],
                         cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 120
        while not leftovers(tmp_path) and time.time() < deadline and p.poll() is None:
            time.sleep(0.05)
        assert leftovers(tmp_path), "the temporary output never appeared"
        time.sleep(0.5)
        p.send_signal(sig)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 130, err
    assert err.decode().strip().splitlines()[-1] == "mgv: error: interrupted"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["in.mkv"]


# ---- failing runs in a real process: disk full, SIGKILL (tiny model, no registered model needed) -
RUNNER = """
import sys
from neuralcodec import cli, weights
m = weights.load_weights_file(sys.argv[1], sys.argv[2], name="tiny-test")
weights.load_model = lambda name=None: m
sys.argv = ["mgv"] + sys.argv[3:]
cli.main()
"""


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    torch.manual_seed(0)
    m = Tokenizer(CONFIGS["tiny"])
    path = tmp_path_factory.mktemp("wf") / "tiny.safetensors"
    return path, weights.save_weights(m, path, "tiny-test")


def run_tiny(tiny_file, args, cwd, fsize=None, popen=False):
    import resource

    script = cwd / "run_mgv.py"
    script.write_text(RUNNER)
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")

    def limit():
        if fsize is not None:  # Python ignores SIGXFSZ, so writes past the limit fail with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    cmd = [sys.executable, str(script), str(tiny_file[0]), tiny_file[1], *args]
    if popen:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit)


def test_disk_full_leaves_nothing(tiny_file, tmp_path):
    make_video(tmp_path / "in.mkv", t=30, w=64, h=64)
    r = run_tiny(tiny_file, ["encode", "in.mkv", "-o", "a.mgv", "--entropy", "none", "-q"],
                 tmp_path, fsize=1000)
    assert r.returncode == 4, r.stderr
    assert r.stderr.startswith("mgv: error: File too large") and len(r.stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mkv", "run_mgv.py"]
    # decoding into a file that outgrows the limit
    r = run_tiny(tiny_file, ["encode", "in.mkv", "-o", "a.mgv", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    r = run_tiny(tiny_file, ["decode", "a.mgv", "-o", "o.mkv", "-q"], tmp_path,
                 fsize=1500)
    assert r.returncode == 4 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith("mgv: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.mgv", "in.mkv", "run_mgv.py"]


@pytest.mark.slow
def test_sigkill_leaves_only_a_hidden_part_file(tiny_file, tmp_path):
    make_video(tmp_path / "in.mkv", t=600, w=96, h=96)
    p = run_tiny(tiny_file, ["encode", "in.mkv", "-o", "a.mgv", "--segment-frames", "5"], tmp_path, popen=True)
    try:
        deadline = time.time() + 120
        while not leftovers(tmp_path) and time.time() < deadline and p.poll() is None:
            time.sleep(0.02)
        assert leftovers(tmp_path), "the temporary output never appeared"
        time.sleep(0.3)
        p.kill()  # SIGKILL: no cleanup runs
        p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    names = sorted(x.name for x in tmp_path.iterdir())
    assert "a.mgv" not in names
    left = leftovers(tmp_path)
    # hidden, ending in .part: never taken for the output (nor matched by *.mgv)
    assert len(left) == 1 and left[0].startswith(".a.mgv.") and left[0].endswith(".part")
    assert list(tmp_path.glob("*.mgv")) == []


# ---- trust ---------------------------------------------------------------------------------------
def test_tampered_weights_exit_5(tiny_file, tmp_path, monkeypatch):
    path, sha = tiny_file
    models = tmp_path / "models"
    models.mkdir()
    data = bytearray(path.read_bytes())
    data[-10] ^= 1  # one bit of one weight
    (models / "t.safetensors").write_bytes(bytes(data))
    (models / "registry.json").write_text(json.dumps({"tampered": {"file": "t.safetensors", "sha256": sha}}))
    monkeypatch.setattr(weights, "MODELS_DIR", models)
    monkeypatch.setattr(weights, "REGISTRY_FILE", models / "registry.json")
    src = make_video(tmp_path / "in.mkv", t=1)
    r = CliRunner().invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "a.mgv"), "--model", "tampered"])
    line = one_error_line(r, 5)
    assert "sha256 mismatch" in line
    assert not (tmp_path / "a.mgv").exists()


def test_no_pickle_or_shell_in_the_package():
    bad = []
    for p in (ROOT / "neuralcodec").rglob("*.py"):
        text = p.read_text()
        for needle in ("import pickle", "pickle.load", "shell=True", "allow_pickle=True"):
            if needle in text:
                bad.append((p.name, needle))
        bad += [(p.name, m) for m in re.findall(r"(?<![.\w])(?:eval|exec)\(", text)]
        for line in text.splitlines():
            if "torch.load(" in line and "weights_only=True" not in line:
                bad.append((p.name, line.strip()))
    assert bad == []


def test_bits_and_frames_identical_across_thread_counts(tiny):
    import io as _io

    rng = np.random.default_rng(0)
    v = np.clip(rng.normal(128, 40, (9, 40, 48, 3)), 0, 255).astype(np.uint8)
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            data = codec.compress(tiny, v, segment_frames=5, entropy="context")
            outs.append((data, codec.decompress(data, model=tiny)[1]))
    finally:
        torch.set_num_threads(old)
    assert outs[0][0] == outs[1][0]  # the bits (and their entropy coding) do not depend on threads
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    # and a stream made with 2 threads decodes bit-exactly to the same bits with 1
    r = ct.Reader(_io.BytesIO(outs[1][0]))
    assert [s.data for s in r.segments()] == [s.data for s in ct.Reader(_io.BytesIO(outs[0][0])).segments()]


def test_help_names_the_default_model_and_every_model_has_a_card():
    r = CliRunner().invoke(cli.main, ["encode", "--help"])
    assert r.exit_code == 0
    assert f"[default: {weights.DEFAULT_MODEL}]" in " ".join(r.output.split())
    reg = weights.registry()
    assert weights.DEFAULT_MODEL in reg
    for name, entry in reg.items():
        assert entry.path.is_file(), name
        assert (entry.path.parent / f"{name}.md").is_file(), f"no model card for {name}"


def test_retired_model_streams_get_an_error_naming_the_model_and_commit(tiny, tmp_path):
    """A model whose weights left the package (weights.RETIRED) is not registered, keeps its
    card in the lab's history (lab/notes), and a stream that names it fails to decode with one line naming the model and the
    commit that still ships it; no output file is left."""
    from neuralcodec import codec
    reg = weights.registry()
    for name, commit in weights.RETIRED.items():
        assert name not in reg and (Path(__file__).resolve().parents[1] / "lab" / "notes" / f"{name}.md").is_file()
        with pytest.raises(weights.WeightsError, match=f"{name}.*{commit}"):
            weights.load_model(name)
    name = next(iter(weights.RETIRED))
    m = copy.deepcopy(tiny)
    m.name = name
    src = tmp_path / "old.mgv"
    src.write_bytes(codec.compress(m, np.zeros((5, 16, 16, 3), np.uint8)))
    out = tmp_path / "out.mkv"
    r = CliRunner().invoke(cli.main, ["decode", str(src), "-o", str(out)])
    assert r.exit_code != 0 and not out.exists()
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and weights.RETIRED[name] in lines[0], r.output

def test_progress_has_a_total_for_raw_h264(runner, tmp_path):
    """A raw .264 declares no frame count; the progress bar still shows N/total."""
    import av

    src = tmp_path / "clip.264"
    c = av.open(str(src), "w", format="h264")
    s = c.add_stream("libx264", rate=25)
    s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
    for i in range(13):
        f = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 9, np.uint8), format="rgb24")
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    from neuralcodec import video_io as vio
    assert vio.probe(src).frames is None and vio.count_frames(src) == 13
    totals = []
    real = cli.progress
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cli, "progress", lambda total, *a: totals.append(total) or real(total, *a))
        r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "x.mgv")])
    assert r.exit_code == 0, r.output
    assert totals == [13]
    assert vio.count_frames(tmp_path / "missing.264") is None


def test_preset_sets_the_encoder_effort_and_explicit_options_win(runner, tmp_path):
    """--preset medium encodes as --refine <medium's steps>; an explicit --refine overrides the
    preset; an unknown preset is a usage error."""
    from neuralcodec.configs import PRESETS
    src = make_video(tmp_path / "in.mkv", t=5)

    def enc(name, *args):
        r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / name), "-q", *args])
        assert r.exit_code == 0, r.output
        return (tmp_path / name).read_bytes()

    medium = enc("medium.mgv", "--preset", "medium")
    assert medium == enc("r.mgv", "--refine", str(PRESETS["medium"]["refine"]))
    assert medium != enc("fast.mgv")
    assert enc("f.mgv", "--preset", "medium", "--refine", "0") == enc("fast2.mgv", "--preset", "fast")
    r = runner.invoke(cli.main, ["encode", str(src), "-o", str(tmp_path / "x.mgv"), "--preset", "placebo"])
    one_error_line(r, 3)
    assert not (tmp_path / "x.mgv").exists()
