import json

import pytest
import torch

from megatron_utils.models.baselines import FrameHead, LSTMHead
from megatron_utils.models.heads import (
    MODEL_CONFIGS,
    MegatronConfig,
    MegatronHead,
    TemporalHead,
    list_models,
    model_config,
)

MEGATRON = {
    "cross_attention": {},
    "mean_pooling": {"pooling": "mean"},
    "shared_encoders": {"share_encoders": True},
    "concat": {"fusion": "concat"},
    "rgb_only": {"streams": "rgb"},
    "depth_only": {"streams": "depth"},
    "sinusoidal": {"positional": "sinusoidal", "pooling": "mean", "n_cross_layers": 2},
}
BASELINES = {  # variant -> (registered model, overrides)
    "lstm": ("lstm", {}),
    "lstm_last_state": ("lstm", {"pooling": "last"}),
    "lstm_one_way_two_layers": ("lstm", {"bidirectional": False, "n_layers": 2}),
    "lstm_rgb_only": ("lstm", {"streams": "rgb"}),
    "frame_mean": ("frame-cnn", {}),
    "frame_max": ("frame-cnn", {"pooling": "max"}),
    "frame_depth_only": ("frame-cnn", {"streams": "depth"}),
}
VARIANTS = {**{name: ("megatron-tiny", overrides) for name, overrides in MEGATRON.items()}, **BASELINES}


def tiny(model: str = "megatron-tiny", overrides: dict | None = None) -> TemporalHead:
    torch.manual_seed(0)
    return TemporalHead.build(model_config(model, rgb_dim=12, depth_dim=7, **(overrides or {}))).eval()


def clip_batch(batch: int = 3, frames: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    rgb = torch.randn(batch, frames, 12, generator=generator)
    depth = torch.randn(batch, frames, 7, generator=generator)
    return rgb, depth, torch.ones(batch, frames, dtype=torch.bool)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_frames_do_not_change_the_output(variant):
    model = tiny(*VARIANTS[variant])
    rgb, depth, valid = clip_batch()
    short = model(rgb[:, :4], depth[:, :4], valid=valid[:, :4])
    assert short.shape == (3, 1) and torch.isfinite(short).all()
    # The same clips padded with two frames of garbage, masked as invalid.
    valid[:, 4:] = False
    rgb[:, 4:], depth[:, 4:] = 1e3, -1e3
    padded = model(rgb, depth, valid=valid)
    torch.testing.assert_close(padded, short, rtol=1e-5, atol=1e-5)
    # Unmasked, the same frames do change the output: the mask is what keeps them out.
    assert not torch.allclose(model(rgb, depth, valid=torch.ones_like(valid)), short, atol=1e-3)


@pytest.mark.parametrize("variant", ["cross_attention", "lstm", "frame_mean", "frame_max"])
def test_clips_of_different_lengths_in_one_batch_match_their_own_outputs(variant):
    model = tiny(*VARIANTS[variant])
    rgb, depth, valid = clip_batch()
    valid[0, 2:] = False  # clip 0 has two frames, clip 1 five, clip 2 all six
    valid[1, 5:] = False
    batched = model(rgb, depth, valid=valid)
    for clip, length in enumerate([2, 5, 6]):
        one = slice(clip, clip + 1)
        alone = model(rgb[one, :length], depth[one, :length], valid=valid[one, :length])
        torch.testing.assert_close(batched[clip:clip + 1], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_single_image_is_a_clip_of_length_one(variant):
    model = tiny(*VARIANTS[variant])
    rgb, depth, valid = clip_batch(batch=2, frames=1)
    logits = model(rgb, depth, valid=valid)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", ["cross_attention", "shared_encoders", "depth_only", "lstm_last_state",
                                     "frame_max"])
def test_save_and_from_pretrained_give_identical_outputs(tmp_path, variant):
    model = tiny(*VARIANTS[variant])
    rgb, depth, valid = clip_batch()
    model.save_pretrained(tmp_path / "checkpoint")  # the hub mixin's folder: config, weights, model card
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["README.md", "config.json",
                                                                          "model.safetensors"]
    card = (tmp_path / "checkpoint" / "README.md").read_text()
    assert f"A `{model.config.architecture}` temporal head" in card
    loaded = TemporalHead.from_pretrained(tmp_path / "checkpoint")  # the architecture config.json names
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    torch.testing.assert_close(loaded(rgb, depth, valid=valid), model(rgb, depth, valid=valid),
                               rtol=0, atol=0)
    if variant == "shared_encoders":  # still one set of encoder weights after loading
        assert loaded.encoders["rgb"] is loaded.encoders["depth"]


def test_from_pretrained_names_what_is_missing_or_wrong(tmp_path):
    lstm = tiny("lstm")
    lstm.save_pretrained(tmp_path / "lstm")
    with pytest.raises(ValueError, match="names a 'lstm' temporal head, not a MegatronHead"):
        MegatronHead.from_pretrained(tmp_path / "lstm")
    (tmp_path / "lstm" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        TemporalHead.from_pretrained(tmp_path / "lstm")
    tiny().save_pretrained(tmp_path / "megatron")
    config = json.loads((tmp_path / "megatron" / "config.json").read_text())
    (tmp_path / "megatron" / "config.json").write_text(json.dumps({**config, "colour": "red"}))
    with pytest.raises(ValueError, match=r"unknown MegatronConfig field\(s\) \['colour'\]"):
        TemporalHead.from_pretrained(tmp_path / "megatron")


def test_loading_is_strict_about_the_weights(tmp_path):
    """A weights file missing a tensor (or holding one the architecture lacks) is an error, not a model
    left partly random."""
    from safetensors.torch import load_file, save_file

    tiny().save_pretrained(tmp_path)
    state = load_file(str(tmp_path / "model.safetensors"))
    save_file({name: value for name, value in state.items() if not name.startswith("head.")},
              str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="Missing key"):
        TemporalHead.from_pretrained(tmp_path)


def test_ablations_change_the_architecture():
    full, concat, rgb_only, shared = (tiny(*VARIANTS[v]) for v in
                                      ("cross_attention", "concat", "rgb_only", "shared_encoders"))
    assert len(full.cross_layers) == 1 and len(concat.cross_layers) == 0
    assert list(rgb_only.embeddings) == ["rgb"]
    assert rgb_only(clip_batch()[0], valid=clip_batch()[2]).shape == (3, 1)  # the depth stream is not needed
    with pytest.raises(ValueError, match="depth stream is on"):
        full(clip_batch()[0], valid=clip_batch()[2])
    assert shared.num_parameters() < full.num_parameters()


def test_config_round_trip_registry_and_validation(tmp_path):
    config = model_config("megatron-base", rgb_dim=384, depth_dim=256, streams="depth")
    MegatronHead(config).save_pretrained(tmp_path)
    assert MegatronHead.from_pretrained(tmp_path).config == config
    stored = json.loads((tmp_path / "config.json").read_text())
    assert stored["d_model"] == MODEL_CONFIGS["megatron-base"]["d_model"] and stored["streams"] == "depth"
    assert "megatron-tiny" in list_models() and "megatron-base" in list_models()
    with pytest.raises(ValueError, match="unknown model"):
        model_config("megatron-huge")
    with pytest.raises(ValueError, match="fusion must be one of"):
        MegatronConfig(fusion="sum")
    with pytest.raises(ValueError, match="unknown MegatronConfig fields"):
        MegatronConfig.from_dict({"d_model": 64, "colour": "red"})
    with pytest.raises(ValueError, match="more than max_len"):
        rgb, depth, valid = clip_batch()
        MegatronHead(MegatronConfig(rgb_dim=12, depth_dim=7, max_len=4))(rgb, depth, valid=valid)


def test_frame_dropout_holes_are_masked_out_like_padding():
    # Training drops frames from the middle of a clip: the baselines must ignore holes, not just tails.
    for variant in ("lstm", "frame_mean", "frame_max"):
        model = tiny(*VARIANTS[variant])
        rgb, depth, valid = clip_batch()
        keep = [0, 2, 3, 5]
        compact = model(rgb[:, keep], depth[:, keep], valid=valid[:, keep])
        valid[:, [1, 4]] = False
        rgb[:, [1, 4]], depth[:, [1, 4]] = 1e3, -1e3
        torch.testing.assert_close(model(rgb, depth, valid=valid), compact, rtol=1e-5, atol=1e-5)


def test_baselines_are_what_their_names_say():
    lstm, frame, frame_max = (tiny(*VARIANTS[v]) for v in ("lstm", "frame_mean", "frame_max"))
    assert isinstance(lstm, LSTMHead) and lstm.lstms["rgb"].bidirectional
    assert isinstance(frame, FrameHead) and frame.num_parameters() == (12 + 7) * 3 + 1  # norm + linear
    rgb, depth, valid = clip_batch()
    # The frame head's clip P(fake) is the mean of its frames' (mean pooling) or the top frame's (max).
    frame_p = torch.sigmoid(frame.frame_logits(rgb, depth))[..., 0]
    torch.testing.assert_close(torch.sigmoid(frame(rgb, depth, valid=valid))[:, 0], frame_p.mean(1))
    torch.testing.assert_close(frame_max(rgb, depth, valid=valid)[:, 0],
                               frame_max.frame_logits(rgb, depth)[..., 0].amax(1))
    # The order of frames matters to the LSTM, and not to the per-frame classifier.
    reverse = torch.arange(5, -1, -1)
    backwards = {"rgb": rgb[:, reverse], "depth": depth[:, reverse], "valid": valid}
    assert not torch.allclose(lstm(**backwards), lstm(rgb, depth, valid=valid))
    torch.testing.assert_close(frame(**backwards), frame(rgb, depth, valid=valid))
    with pytest.raises(ValueError, match="pooling must be one of"):
        model_config("frame-cnn", pooling="cls")
    assert {"lstm", "frame-cnn", "megatron-base"} <= set(list_models())


AUDIO_VARIANTS = {name: VARIANTS[name] for name in
                  ("cross_attention", "mean_pooling", "rgb_only", "concat", "lstm", "lstm_last_state")}


def audio_batch(batch: int = 3, frames: int = 6, heard: int = 4) -> torch.Tensor:
    """Audio stream features [B, T, 5]: a 4-d embedding and the presence channel, sound in the first `heard`
    frames and all-zero rows after them."""
    audio = torch.randn(batch, frames, 5, generator=torch.Generator().manual_seed(2))
    audio[..., -1] = 1.0
    audio[:, heard:] = 0.0
    return audio


@pytest.mark.parametrize("variant", AUDIO_VARIANTS)
def test_the_audio_stream_counts_where_there_is_sound_and_silence_still_gets_a_score(variant):
    model, overrides = AUDIO_VARIANTS[variant]
    model = tiny(model, {"audio_dim": 5, **overrides})
    assert "audio" in model.stream_names
    rgb, depth, valid = clip_batch()
    audio = audio_batch()
    with_sound = model(rgb, depth, audio, valid=valid)
    assert torch.isfinite(with_sound).all()
    other_voice = audio.clone()
    other_voice[:, :4, :4] = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(3))
    assert not torch.allclose(model(rgb, depth, other_voice, valid=valid), with_sound, atol=1e-4)
    # A video without any sound gets a finite score, whatever lies in its (absent) audio rows.
    silent = torch.zeros_like(audio)
    no_sound = model(rgb, depth, silent, valid=valid)
    assert torch.isfinite(no_sound).all()
    silent[..., :4] = 1e3  # garbage in the embedding channels, presence 0
    torch.testing.assert_close(model(rgb, depth, silent, valid=valid), no_sound, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="audio stream is on|audio_dim=5"):
        model(rgb, depth, valid=valid)


@pytest.mark.parametrize("variant", ["cross_attention", "mean_pooling", "rgb_only"])
def test_frames_without_sound_never_change_the_transformer_output(variant):
    model, overrides = AUDIO_VARIANTS[variant]
    model = tiny(model, {"audio_dim": 5, **overrides})
    rgb, depth, valid = clip_batch()
    audio = audio_batch(heard=4)
    reference = model(rgb, depth, audio, valid=valid)
    audio[:, 4:, :4] = -1e3  # silent frames (presence 0) with garbage features
    torch.testing.assert_close(model(rgb, depth, audio, valid=valid), reference, rtol=1e-5, atol=1e-5)
    # The video frames there still count: the clip is not cut to the frames with sound.
    assert not torch.allclose(model(rgb[:, :4], depth[:, :4], audio[:, :4], valid=valid[:, :4]), reference,
                              atol=1e-4)
