"""Every documented backbone builds as teacher or student, and says truthfully how many features it gives."""

from __future__ import annotations

import pytest
import torch

from bingo.config import ModelConfig
from bingo.models.encoder import Encoder


@pytest.mark.parametrize("arch,stem", [
    ("resnet18", "cifar"), ("resnet34", "small"), ("resnet50", "imagenet"), ("efficientnet_b0", "small"),
    ("mobilenetv3_large_100", "small"), ("mobilenetv3_small_100", "imagenet"),
])
def test_backbone_feature_dim_is_what_it_outputs(arch, stem):
    torch.manual_seed(0)
    encoder = Encoder(ModelConfig(arch=arch, stem=stem, head_hidden=32, embed_dim=8), 3).eval()
    with torch.no_grad():
        features = encoder.features(torch.randn(2, 3, 32, 32))
        embeddings = encoder(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, encoder.feature_dim)
    assert embeddings.shape == (2, 8)
