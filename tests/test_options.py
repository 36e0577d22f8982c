"""EncodeOptions: every encode option's rule in one place, checked once per model."""
import pytest

from neuralcodec import codec
from neuralcodec.errors import InputError
from neuralcodec.options import EncodeOptions

from test_codec import clip  # noqa: E402


@pytest.mark.parametrize("fields, word", [
    ({"bits": 0}, "bits"), ({"bits": 7}, "bits"), ({"bits": True}, "bits"),
    ({"entropy": "zip"}, "entropy"), ({"segment_frames": 4}, "segment frames"),
    ({"rdo": -1.0}, "rdo"), ({"rdo": float("nan")}, "rdo"), ({"refine": -1}, "refine"),
    ({"refine": 1.5}, "refine"), ({"bitrate": 0}, "bitrate"), ({"bpp": float("inf")}, "bpp"),
    ({"bitrate": 1e5, "bpp": 0.1}, "not both")])
def test_each_bad_option_is_one_input_error(tiny, fields, word):
    with pytest.raises(InputError, match=word):
        EncodeOptions(**fields).checked(tiny)


def test_checked_once_per_model(tiny, make_tiny):
    opts = EncodeOptions(bits=4).checked(tiny)
    assert opts.checked_for is not None and opts.checked(tiny) is opts
    other = make_tiny(0.05)
    other.name = "another"
    assert opts.checked(other) is not opts  # another model: checked again
    assert opts == EncodeOptions(bits=4)  # the mark is not part of the value
    assert EncodeOptions.of(opts, bits=5).checked_for is None  # a changed copy is unchecked
    with pytest.raises(InputError, match="unknown encode option"):
        EncodeOptions.of(None, bitz=4)


def test_api_takes_the_object_or_its_fields(make_tiny):
    model = make_tiny(0.05)
    v = clip(t=9)
    opts = EncodeOptions(bits=4, rdo=0.0)
    assert codec.compress(model, v, opts) == codec.compress(model, v, bits=4, rdo=0.0)
    assert codec.compress(model, v, opts, bits=5) == codec.compress(model, v, bits=5, rdo=0.0)
    assert EncodeOptions(bpp=0.5).target_bitrate(10, 10, 25.0) == pytest.approx(1250.0)


def test_presets_set_effort_and_explicit_options_win():
    from neuralcodec.configs import DEFAULT_PRESET, DEFAULT_RDO, DEFAULT_REFINE, PRESETS
    assert PRESETS[DEFAULT_PRESET] == {"rdo": DEFAULT_RDO, "refine": DEFAULT_REFINE, "adapt": 0,
                                       "joint": 0}  # today's encoder
    order = ("fast", "medium", "slow", "veryslow")
    fits = [bool(PRESETS[p]["adapt"] or PRESETS[p]["joint"]) for p in order]
    assert fits == [False, False, True, True]  # adaptation only in the slow end
    assert PRESETS["veryslow"]["joint"] > 0 and not PRESETS["veryslow"]["adapt"]  # codes and update together
    steps = [PRESETS[p]["refine"] for p in order[:3]]
    assert steps == sorted(steps) and len(set(steps)) == 3  # a ladder: each slower than the last
    assert EncodeOptions.from_preset() == EncodeOptions()
    assert EncodeOptions.from_preset("slow").refine == PRESETS["slow"]["refine"]
    assert EncodeOptions.from_preset("slow", refine=1, rdo=None).refine == 1
    with pytest.raises(InputError, match="unknown preset"):
        EncodeOptions.from_preset("placebo")


def test_default_bits_come_from_the_registry(tiny, monkeypatch):
    """No --bits: the registered model's default_bits (its measured knee); under rate control
    all K; a model outside the registry, or another file under the same name: all K."""
    from neuralcodec import weights
    k = tiny.cfg.bits
    assert EncodeOptions().stored_bits(tiny) == k
    entry = weights.ModelEntry(tiny.name, "x.safetensors", tiny.sha256, None, 4)
    monkeypatch.setattr(weights, "registry", lambda models_dir=None: {tiny.name: entry})
    assert EncodeOptions().stored_bits(tiny) == 4
    assert EncodeOptions(bits=5).stored_bits(tiny) == 5
    assert EncodeOptions(bitrate=1e5).stored_bits(tiny) == k
    data = codec.compress(tiny, clip(t=5))
    assert codec.decompress(data, model=tiny)[0] is not None
    from neuralcodec.streaminfo import stream_info
    import io
    assert stream_info(io.BytesIO(data)).header.bits == 4
    other = weights.ModelEntry(tiny.name, "x.safetensors", "00" * 32, None, 4)
    monkeypatch.setattr(weights, "registry", lambda models_dir=None: {tiny.name: other})
    assert EncodeOptions().stored_bits(tiny) == k


def test_registry_default_bits_is_validated(tmp_path):
    from neuralcodec import weights
    (tmp_path / "registry.json").write_text('{"m": {"file": "m.safetensors", "sha256": "00", "default_bits": 0}}')
    with pytest.raises(weights.WeightsError, match="default_bits"):
        weights.registry(tmp_path)
    weights.register("m", "m.safetensors", "00", tmp_path, default_bits=12)
    assert weights.registry(tmp_path)["m"].default_bits == 12
