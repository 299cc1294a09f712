import json

import pytest
import torch

from megatron_utils.models.heads import (
    MODEL_CONFIGS,
    MegatronConfig,
    MegatronHead,
    list_models,
    model_config,
)

VARIANTS = {
    "cross_attention": {},
    "mean_pooling": {"pooling": "mean"},
    "shared_encoders": {"share_encoders": True},
    "concat": {"fusion": "concat"},
    "rgb_only": {"streams": "rgb"},
    "depth_only": {"streams": "depth"},
    "sinusoidal": {"positional": "sinusoidal", "pooling": "mean", "n_cross_layers": 2},
}


def tiny(**overrides) -> MegatronHead:
    torch.manual_seed(0)
    return MegatronHead(model_config("megatron-tiny", rgb_dim=12, depth_dim=7, **overrides)).eval()


def clip_batch(batch: int = 3, frames: int = 6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    rgb = torch.randn(batch, frames, 12, generator=generator)
    depth = torch.randn(batch, frames, 7, generator=generator)
    return rgb, depth, torch.ones(batch, frames, dtype=torch.bool)


@pytest.mark.parametrize("variant", VARIANTS)
def test_padded_frames_do_not_change_the_output(variant):
    model = tiny(**VARIANTS[variant])
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


def test_clips_of_different_lengths_in_one_batch_match_their_own_outputs():
    model = tiny()
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
    model = tiny(**VARIANTS[variant])
    rgb, depth, valid = clip_batch(batch=2, frames=1)
    logits = model(rgb, depth, valid=valid)
    assert logits.shape == (2, 1) and torch.isfinite(logits).all()


@pytest.mark.parametrize("variant", ["cross_attention", "shared_encoders", "depth_only"])
def test_save_and_from_pretrained_give_identical_outputs(tmp_path, variant):
    model = tiny(**VARIANTS[variant])
    model.config.threshold = 0.37
    rgb, depth, valid = clip_batch()
    model.save_pretrained(tmp_path / "checkpoint")
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["config.json", "model.safetensors"]
    loaded = MegatronHead.from_pretrained(tmp_path / "checkpoint").eval()
    assert loaded.config == model.config and loaded.config.threshold == 0.37
    torch.testing.assert_close(loaded(rgb, depth, valid=valid), model(rgb, depth, valid=valid),
                               rtol=0, atol=0)
    if variant == "shared_encoders":  # still one set of encoder weights after loading
        assert loaded.encoders["rgb"] is loaded.encoders["depth"]


def test_from_pretrained_names_what_is_missing(tmp_path):
    tiny().config.save(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError, match="model.safetensors is missing"):
        MegatronHead.from_pretrained(tmp_path)


def test_ablations_change_the_architecture():
    full, concat, rgb_only, shared = (tiny(**VARIANTS[v]) for v in
                                      ("cross_attention", "concat", "rgb_only", "shared_encoders"))
    assert len(full.cross_layers) == 1 and len(concat.cross_layers) == 0
    assert list(rgb_only.embeddings) == ["rgb"]
    assert rgb_only(clip_batch()[0], valid=clip_batch()[2]).shape == (3, 1)  # the depth stream is not needed
    with pytest.raises(ValueError, match="depth stream is on"):
        full(clip_batch()[0], valid=clip_batch()[2])
    assert shared.num_parameters() < full.num_parameters()


def test_config_round_trip_registry_and_validation(tmp_path):
    config = model_config("megatron-base", rgb_dim=384, depth_dim=256, streams="depth")
    config.save(tmp_path / "config.json")
    assert MegatronConfig.load(tmp_path / "config.json") == config
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
