import torch


def test_tiny_checkpoint_has_labels(tiny_checkpoint):
    checkpoint = torch.load(tiny_checkpoint, map_location="cpu", weights_only=False)
    assert checkpoint["vit"]["labels"] == ["c0", "c1", "c2"]
