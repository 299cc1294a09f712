from __future__ import annotations

import logging

import huggingface_hub
import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

from megatron_utils.models import backbones
from megatron_utils.models.backbones import (
    WeightsUnavailableError,
    create_backbone,
    list_backbones,
    register_backbone,
)
from megatron_utils.preprocessing.batching import images_to_tensor
from megatron_utils.preprocessing.video import read_image


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No hub access and an empty hub cache, whatever the machine running the tests has."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


def test_registry_lists_backbones_and_rejects_unknown_names():
    assert {"repvit_m0_9", "mobilenetv2_offline", "tiny_random"} <= set(list_backbones())
    with pytest.raises(ValueError, match="unknown backbone 'resnet9000'.*auto"):
        create_backbone("resnet9000")


def test_registered_backbones_return_pooled_features_in_eval_mode():
    for name, dim in [("tiny_random", 256), ("repvit_m0_9", 384), ("mobilenetv2_offline", 1280)]:
        backbone = create_backbone(name, pretrained=False)
        assert not backbone.model.training and backbone.num_features == dim
        with torch.inference_mode():
            assert backbone.model(torch.zeros(2, 3, 64, 64)).shape == (2, dim)


def test_register_backbone_adds_a_builder():
    @register_backbone
    def tiny_random_again(pretrained: bool = True, weights=None):
        return create_backbone("tiny_random", pretrained, weights)

    try:
        assert "tiny_random_again" in list_backbones()
        assert create_backbone("tiny_random_again").num_features == 256
        with pytest.raises(ValueError, match="already registered"):
            register_backbone(tiny_random_again)
    finally:
        del backbones.BACKBONES["tiny_random_again"]  # leave the registry as found


def test_offline_mobilenetv2_has_real_imagenet_weights(asset):
    """The packaged weights through our preprocessing: the 1280-d features, put through the original
    ImageNet classifier, recognise Grace Hopper's military uniform."""
    backbone = create_backbone("mobilenetv2_offline")
    assert backbone.fingerprint.startswith("sha256:b0353104")
    weights = torch.load(asset("mobilenet_v2_imagenet"), map_location="cpu", weights_only=True)
    data = backbone.data_config
    pixels = images_to_tensor(read_image(asset("grace_hopper"))[None], data.input_size, data.mean, data.std,
                              torch.device("cpu"), data.interpolation)
    with torch.inference_mode():
        logits = backbone.model(pixels) @ weights["classifier.1.weight"].T + weights["classifier.1.bias"]
    categories = torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]
    assert categories[int(logits.argmax())] == "military uniform"


def test_explicit_repvit_offline_fails_with_advice(offline_hub):
    with pytest.raises(WeightsUnavailableError, match="repvit_m0_9.*offline.*local path"):
        create_backbone("repvit_m0_9")


def test_auto_offline_picks_mobilenetv2_with_a_notice(offline_hub, caplog):
    with caplog.at_level(logging.WARNING):
        backbone = create_backbone("auto")
    assert backbone.name == "mobilenetv2_offline"
    assert "RepViT weights unavailable" in caplog.text and "mobilenetv2_offline" in caplog.text


def test_repvit_loads_local_weights_file_and_auto_uses_it(offline_hub, tmp_path):
    source = timm.create_model("repvit_m0_9", num_classes=0)
    save_file(source.state_dict(), str(tmp_path / "model.safetensors"))
    backbone = create_backbone("auto", weights=tmp_path)  # a folder holding model.safetensors
    assert backbone.name == "repvit_m0_9" and backbone.weights.startswith("local file")
    for name, tensor in source.state_dict().items():
        assert torch.equal(backbone.model.state_dict()[name], tensor), name
    with pytest.raises(WeightsUnavailableError, match="weights file does not exist"):
        create_backbone("auto", weights=tmp_path / "missing.safetensors")
