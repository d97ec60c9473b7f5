import pytest
import torch

from contourqa.qa_models.networks import EfficientDet3D, build_network, soft_dice


@pytest.mark.parametrize("architecture", ["efficientdet3d", "efficientdet3d-seg", "regnet3d"])
def test_forward_gives_one_dice_in_unit_interval_and_trains(architecture):
    torch.manual_seed(0)
    network = build_network(architecture)
    x = torch.rand(3, 2, 16, 32, 32)
    y = network(x)
    assert y.shape == (3,) and ((y > 0) & (y < 1)).all()
    before = [p.detach().clone() for p in network.parameters()]
    loss = ((y - torch.tensor([0.1, 0.5, 0.9])) ** 2).mean()
    loss.backward()
    torch.optim.SGD(network.parameters(), lr=0.1).step()
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_efficientdet_levels_have_the_published_channels():
    network = EfficientDet3D()
    features, x = [], network.stem(torch.rand(1, 2, 24, 48, 48))
    features.append(x.shape[1])
    for stage in network.stages:
        x = stage(x)
        features.append(x.shape[1])
    assert features == [32, 16, 24, 40, 80, 112, 192]
    assert len(network.bifpn) == 3
    assert all(lateral.out_channels == 64 for lateral in network.lateral)


def test_third_channel_for_entropy():
    assert build_network("regnet3d", in_channels=3)(torch.rand(1, 3, 16, 32, 32)).shape == (1,)


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture 'resnet'"):
        build_network("resnet")


def test_soft_dice_of_a_drawn_reference():
    mask = torch.zeros(2, 1, 8, 8, 8)
    mask[:, :, 2:6, 2:6, 2:6] = 1
    drawn = torch.zeros_like(mask)
    drawn[0, :, 2:6, 2:6, 2:6] = 1  # the first agrees with the mask, the second is half of it
    drawn[1, :, 2:4, 2:6, 2:6] = 1
    assert torch.allclose(soft_dice(drawn, mask), torch.tensor([1.0, 2 * 32 / (32 + 64)]), atol=1e-4)
    assert soft_dice(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)).item() == 0  # an empty contour
    assert soft_dice(torch.ones(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4)).item() < 1e-3


def test_reference_head_draws_at_full_resolution_and_scores_the_candidate_mask():
    """efficientdet3d-seg: the drawing has the input's shape (odd sizes too); its Dice is the soft Dice
    against the input's mask channel; the encoder runs once and the head (with the dropout) after it, as
    Monte Carlo dropout needs."""
    torch.manual_seed(0)
    network = build_network("efficientdet3d-seg", in_channels=4).eval()
    x = torch.rand(2, 4, 20, 36, 44)
    x[:, 1] = (x[:, 1] > 0.7).float()
    dice, logits = network.forward_with_reference(x)
    assert logits.shape == (2, 1, 20, 36, 44)
    assert torch.allclose(dice, soft_dice(torch.sigmoid(logits), x[:, 1:2]))
    assert torch.allclose(network(x), dice)
    assert torch.allclose(network.decode(network.encode(x)), dice)
    network.head[0].train()  # the dropout on: two passes of the head differ
    encoded = network.encode(x)
    assert not torch.equal(network.decode(encoded), network.decode(encoded))
