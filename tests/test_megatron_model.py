"""Megatron as one module from pixels to verdict: the cached path and the pixel path agree, and gradients
reach the input pixels, the depth provider and both embedders."""

from __future__ import annotations

import pytest
import torch
from feature_inputs import real_faces_entries, save_tiny_depth_model, write_faces_cache

from megatron_utils.inference.pixel_path import MegatronModel
from megatron_utils.models.heads import MegatronHead, model_config
from megatron_utils.preprocessing.depth import DepthConfig, DepthEstimator, compute_depth
from megatron_utils.preprocessing.embed import EmbedConfig, Embedder, compute_embeddings
from megatron_utils.training.attacks import AttackConfig, attack_clips, video_clips

STREAMS = {"cross_attention": {}, "concat": {"fusion": "concat"}, "rgb_only": {"streams": "rgb"},
           "depth_only": {"streams": "depth"}}
VIDEO = "video/single_face"  # 7 real frames: a clip of 4 and a clip of 3 (padded)


@pytest.fixture(scope="module")
def setup(asset, tmp_path_factory):
    root = tmp_path_factory.mktemp("pixel")
    entries = real_faces_entries(asset)
    depth_config = DepthConfig(model=str(save_tiny_depth_model(root / "depth")), output_size=48)
    embed_config = EmbedConfig(rgb_backbone="tiny_random", depth_backbone="tiny_random", frames_per_clip=4)
    faces = write_faces_cache(entries, root / "cache")
    depth, _ = compute_depth(faces, depth_config, cache_root=root / "cache")
    embed, _ = compute_embeddings(faces, depth, embed_config, cache_root=root / "cache")
    cached, _ = embed.read(VIDEO)
    pixels, valid, _ = video_clips(faces, embed, VIDEO)  # the crops laid out exactly as the cached clips
    assert torch.equal(valid, torch.from_numpy(cached["valid"]))
    return DepthEstimator(depth_config), Embedder(embed_config), cached, pixels


def megatron(setup, **overrides) -> MegatronModel:
    depth, embedder, _, _ = setup
    torch.manual_seed(0)
    head = MegatronHead(model_config("megatron-tiny", rgb_dim=256, depth_dim=256, **overrides))
    return MegatronModel(depth, embedder, head).eval()


@pytest.mark.parametrize("variant", STREAMS)
def test_cached_and_pixel_paths_give_the_same_score(setup, variant):
    _, _, cached, pixels = setup
    model = megatron(setup, **STREAMS[variant])
    valid = torch.from_numpy(cached["valid"])
    features = {name: torch.from_numpy(cached[name]).float() for name in model.streams}
    with torch.no_grad():
        from_cache = torch.sigmoid(model.head_logits(features, valid))
        from_pixels = torch.sigmoid(model(pixels, valid))
        recomputed = model.features(pixels)
    for name in model.streams:  # the embeddings themselves, within the cache's float16 precision
        torch.testing.assert_close(recomputed[name][valid], features[name][valid], atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(from_pixels, from_cache, atol=2e-3, rtol=0)


def test_a_few_training_steps_reach_the_pixels_the_depth_model_and_both_embedders(setup):
    _, _, cached, pixels = setup
    model = megatron(setup).train().requires_grad_(True)
    crops = pixels.clone().requires_grad_(True)
    valid, label = torch.from_numpy(cached["valid"]), torch.ones(len(pixels), 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        crops.grad = None
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(crops, valid), label)
        loss.backward()
        losses.append(loss.item())
        for name in ("depth_provider", "rgb_embedder", "depth_embedder", "head"):
            grads = [p.grad for p in getattr(model, name).parameters() if p.grad is not None]
            assert grads and sum(g.abs().sum() for g in grads) > 0, f"no gradient reached the {name}"
        optimizer.step()
    assert crops.grad is not None and crops.grad[valid].abs().sum() > 0  # the input pixels
    assert crops.grad[~valid].abs().sum() == 0  # padded frames never influence the verdict
    assert losses[-1] < losses[0]


@pytest.fixture(scope="module")
def attacked(setup):
    """The clean clips, a random head's verdicts taken as the true labels (so every attack has a score to
    push down), and P(true class) after each attack at eps 8/255."""
    _, _, cached, pixels = setup
    model = megatron(setup).requires_grad_(False)
    valid = torch.from_numpy(cached["valid"])
    with torch.no_grad():
        clean = torch.sigmoid(model(pixels, valid))[:, 0]
    labels = (clean >= 0.5).long()
    eps = 8 / 255

    def p_true(crops):
        with torch.no_grad():
            p = torch.sigmoid(model(crops, valid))[:, 0]
        return torch.where(labels == 1, p, 1 - p)

    config = AttackConfig(steps=10, queries=60)
    adversarial = {name: attack_clips(model, pixels, valid, labels, name, eps, config)
                   for name in ("fgsm", "pgd", "square")}
    assert not model.training  # the attacks leave the model in eval mode
    signs = torch.rand(pixels.shape, generator=torch.Generator().manual_seed(0)) < 0.5
    adversarial["noise"] = (pixels + torch.where(signs, -eps, eps)).clamp(0, 1)
    harmed = {name: p_true(crops) for name, crops in adversarial.items()}
    return model, pixels, valid, labels, eps, p_true(pixels), harmed, adversarial


def test_eps_zero_is_the_clean_clip(setup, attacked):
    model, pixels, valid, labels, *_ = attacked
    assert attack_clips(model, pixels, valid, labels, "pgd", 0.0) is pixels


def test_attacks_stay_within_eps_and_the_pixel_range(attacked):
    _, pixels, valid, _, eps, _, _, adversarial = attacked
    for name, crops in adversarial.items():
        assert crops.shape == pixels.shape
        assert (crops - pixels).abs().max() <= eps + 1e-6, name
        assert crops.min() >= 0 and crops.max() <= 1, name


def test_pgd_hurts_more_than_fgsm_and_fgsm_more_than_noise_of_the_same_size(attacked):
    _, pixels, *_, clean, p_true, adversarial = attacked
    assert (clean >= 0.5).all()
    mean = {name: float(value.mean()) for name, value in p_true.items()}
    assert mean["pgd"] < mean["fgsm"] < mean["noise"] <= float(clean.mean()) + 1e-3, mean
    # Square (black-box) keeps a perturbation only where it flips the verdict within its query budget.
    flipped = (adversarial["square"] != pixels).flatten(1).any(dim=1)
    assert (p_true["square"][flipped] < 0.5).all()
    assert torch.equal(p_true["square"][~flipped], clean[~flipped])
