import pytest
import torch

from contourqa.qa_models.networks import EfficientDet3D, build_network


@pytest.mark.parametrize("architecture", ["efficientdet3d", "regnet3d"])
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
