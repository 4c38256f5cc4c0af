"""The region encoder: presets, shapes, the one-channel stem, the embedding contract."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision

from regionmir.encoder import (
    BACKBONES,
    HEADS,
    INPUT_MEAN,
    INPUT_STD,
    EncoderConfig,
    RegionEncoder,
    list_presets,
    load_preset,
)

PRESETS = ("resnet10-cpu", "resnet18", "resnet18-small", "resnet34", "resnet50")


@pytest.fixture(autouse=True)
def no_weight_downloads(monkeypatch, tmp_path):
    """Any attempt to fetch pretrained weights fails the test, and nothing lands in the hub cache."""

    def refuse(*args, **kwargs):
        raise AssertionError("the encoder tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", refuse)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    yield
    assert not (tmp_path / "torch-home").exists()


@pytest.fixture(scope="module")
def models_by_preset():
    torch.manual_seed(0)
    return {name: RegionEncoder(load_preset(name)).eval() for name in PRESETS}


def test_bundled_presets_are_listed_and_load():
    assert set(PRESETS) <= set(list_presets())
    assert load_preset("resnet18") == EncoderConfig()
    assert load_preset("resnet18-small").crop_size == 64
    assert load_preset("resnet50").backbone == "resnet50"
    with pytest.raises(ValueError, match="resnet18"):
        load_preset("vit-huge")


@pytest.mark.parametrize("preset", PRESETS)
def test_output_shapes_and_unit_norm_embedding(models_by_preset, preset):
    model = models_by_preset[preset]
    config = model.config
    assert model.feature_dim == (2048 if config.backbone == "resnet50" else 8 * config.width)
    for side in (96, 64):
        with torch.no_grad():
            out = model(torch.rand(2, 1, side, side))
        assert set(out) == {"features", *HEADS}
        assert out["features"].shape == (2, model.feature_dim)
        assert out["projection"].shape == (2, config.embedding_dim)
        assert out["embedding"].shape == (2, config.embedding_dim)
        assert out["logits"].shape == (2, config.num_classes)
        assert out["embedding"].dtype == torch.float32
        torch.testing.assert_close(out["embedding"].norm(dim=1), torch.ones(2))


def test_embed_matches_forward(models_by_preset):
    model = models_by_preset["resnet18-small"]
    x = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        embedding = model.embed(x)
        from_forward = model(x, heads=("embedding",))["embedding"]
    assert embedding.dtype == torch.float32 and embedding.shape == (3, 128)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(embedding, from_forward)


def test_classify_and_project_agree_with_forward(models_by_preset):
    model = models_by_preset["resnet18-small"]
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        out = model(x)
        torch.testing.assert_close(model.classify(x), out["logits"])
        torch.testing.assert_close(model.project(x), out["projection"])


def test_one_channel_stem_and_no_stem_maxpool_for_small_crops(models_by_preset):
    model = models_by_preset["resnet18"]
    conv1 = model.backbone.conv1
    assert conv1.in_channels == 1 and tuple(conv1.weight.shape) == (64, 1, 7, 7)
    assert conv1.stride == (2, 2)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    # 96 px → 48 after the stem, /8 over layers 2-4 → a 6x6 final map.
    backbone = model.backbone
    with torch.no_grad():
        x = torch.rand(1, 1, 96, 96)
        x = backbone.relu(backbone.bn1(backbone.conv1(x)))
        x = backbone.layer4(backbone.layer3(backbone.layer2(backbone.layer1(backbone.maxpool(x)))))
    assert x.shape[-2:] == (6, 6)
    big = RegionEncoder(EncoderConfig(crop_size=224))
    assert isinstance(big.backbone.maxpool, torch.nn.MaxPool2d)


def test_wrong_input_is_refused(models_by_preset):
    model = models_by_preset["resnet18-small"]
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        model(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError):
        model(torch.rand(1, 64, 64))
    with pytest.raises(ValueError):
        model(torch.zeros(2, 1, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError):
        model(torch.rand(2, 1, 64, 64), heads=("attention",))


def test_the_model_normalises_its_input(models_by_preset):
    model = models_by_preset["resnet18-small"]
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.features(x), model.backbone((x - INPUT_MEAN) / INPUT_STD))


def test_forward_runs_only_the_requested_heads():
    model = RegionEncoder(load_preset("resnet18-small")).train()
    out = model(torch.rand(2, 1, 32, 32), heads=("projection",))
    assert set(out) == {"features", "projection"}
    out["projection"].sum().backward()
    assert model.projection_head.layers[0].weight.grad is not None
    assert model.classification_head.weight.grad is None
    assert model.backbone.conv1.weight.grad is not None


def test_config_round_trips_through_a_dict_and_json():
    config = EncoderConfig(
        backbone="resnet34", embedding_dim=64, projection_hidden_dim=256, num_classes=29, crop_size=64
    )
    assert EncoderConfig.from_dict(config.to_dict()) == config
    assert EncoderConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="unknown"):
        EncoderConfig.from_dict({**config.to_dict(), "dropout": 0.1})
    with pytest.raises(ValueError):
        EncoderConfig(backbone="vgg16")
    with pytest.raises(ValueError):
        EncoderConfig(embedding_dim=0)
    assert set(BACKBONES) == {"resnet10", "resnet18", "resnet34", "resnet50"}


@pytest.mark.parametrize(
    "preset, low, high",
    [
        ("resnet10-cpu", 1.22e6, 1.23e6),  # one BasicBlock per stage, half the stock width
        ("resnet18", 11.1e6, 11.2e6),
        ("resnet34", 21.2e6, 21.3e6),
        ("resnet50", 23.4e6, 23.6e6),
    ],
)
def test_backbone_parameter_counts_are_the_stock_resnets_minus_fc(models_by_preset, preset, low, high):
    model = models_by_preset[preset]
    backbone_params = sum(p.numel() for p in model.backbone.parameters())
    assert low < backbone_params < high
    heads = model.num_parameters() - backbone_params
    assert heads < 5e6  # the heads are small next to the backbone


def test_a_narrow_resnet10_has_the_stock_layout_at_a_fraction_of_the_width():
    narrow = RegionEncoder(EncoderConfig(backbone="resnet10", width=16, crop_size=32, num_classes=29))
    stock = RegionEncoder(EncoderConfig(backbone="resnet10", crop_size=32, num_classes=29))
    assert narrow.backbone.conv1.out_channels == 16 and narrow.backbone.conv1.in_channels == 1
    assert [narrow.backbone.layer4[0].conv2.out_channels, narrow.feature_dim] == [128, 128]
    assert stock.feature_dim == 512
    # the same parameter names (checkpoints stay torchvision-shaped), ~1/16 of the weights
    assert narrow.state_dict().keys() == stock.state_dict().keys()
    narrow_backbone = sum(p.numel() for p in narrow.backbone.parameters())
    stock_backbone = sum(p.numel() for p in stock.backbone.parameters())
    assert 1 / 20 < narrow_backbone / stock_backbone < 1 / 12
    out = narrow.eval()(torch.rand(3, 1, 32, 32))
    assert out["logits"].shape == (3, 29) and out["embedding"].shape == (3, 128)
    # every conv is initialised (not left at zeros) and BatchNorm starts as the identity
    assert all(float(m.weight.detach().abs().sum()) > 0 for m in narrow.modules() if isinstance(m, torch.nn.Conv2d))


def test_only_resnet10_can_be_narrowed():
    with pytest.raises(ValueError, match="only resnet10"):
        EncoderConfig(backbone="resnet18", width=32)
    with pytest.raises(ValueError, match="width"):
        EncoderConfig(backbone="resnet10", width=0)
