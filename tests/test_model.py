import pytest
import torch
from torch import nn

from fastunet import geometry
from fastunet.model import ReferenceUNet, UNetConfig, center_crop, count_parameters, split_merge


def paper_parameter_count(in_channels=1, num_classes=2, base=64, depth=4):
    """Parameters of the paper's U-Net, counted from the architecture by hand."""
    widths = [base * 2**i for i in range(depth + 1)]
    conv3 = lambda cin, cout: 9 * cin * cout + cout  # noqa: E731
    total, cin = 0, in_channels
    for w in widths[:-1]:  # contracting path: two 3x3 convs per level
        total += conv3(cin, w) + conv3(w, w)
        cin = w
    total += conv3(widths[-2], widths[-1]) + conv3(widths[-1], widths[-1])  # bottom
    for i in reversed(range(depth)):  # expansive path
        total += 4 * widths[i + 1] * widths[i] + widths[i]  # 2x2 up-conv halving channels
        total += conv3(2 * widths[i], widths[i]) + conv3(widths[i], widths[i])
    total += widths[0] * num_classes + num_classes  # 1x1 head
    return total


def test_paper_network_layers_and_parameters():
    model = ReferenceUNet(UNetConfig())
    assert model.config.num_conv_layers == 23
    assert len(model.conv_layers()) == 23
    expected = paper_parameter_count()
    assert expected == 31_030_658  # 1 input channel, 2 classes, base 64, depth 4
    assert count_parameters(model) == expected


@pytest.mark.parametrize("cfg", [UNetConfig(3, 5, 8, 2), UNetConfig(2, 3, 4, 3)])
def test_parameter_count_other_configs(cfg):
    model = ReferenceUNet(cfg)
    assert count_parameters(model) == paper_parameter_count(
        cfg.in_channels, cfg.num_classes, cfg.base_channels, cfg.depth
    )
    assert len(model.conv_layers()) == cfg.num_conv_layers


def test_paper_network_maps_572_to_388_in_meta():
    # Shape propagation on the meta device: the real paper network at its real tile size.
    model = ReferenceUNet(UNetConfig()).to("meta")
    out = model(torch.empty(1, 1, 572, 572, device="meta"))
    assert tuple(out.shape) == (1, 2, 388, 388)


def test_he_normal_init():
    """std sqrt(2 / N), N = incoming nodes of one neuron: checked on layers whose fan-in and
    fan-out differ, so counting the wrong side fails."""
    model = ReferenceUNet(UNetConfig(base_channels=64, depth=2, num_classes=3))
    layers = {
        "down[0].conv1 (1 -> 64)": (model.down[0].conv1, 9 * 1),
        "down[1].conv1 (64 -> 128)": (model.down[1].conv1, 9 * 64),
        "dec[0].conv1 (256 -> 128)": (model.dec[0].conv1, 9 * 256),
        "up[0] (256 -> 128, one input pixel per output)": (model.up[0], 256),
        "head (64 -> 3)": (model.head, 64),
    }
    for name, (layer, fan_in) in layers.items():
        w = layer.weight
        std = (2.0 / fan_in) ** 0.5
        # relative standard error of a sample std is 1 / sqrt(2 n): the bound is >= 5 of them
        tol = max(0.02, 5 / (2 * w.numel()) ** 0.5)
        assert abs(w.std().item() - std) / std < tol, (name, w.std().item(), std)
        assert abs(w.mean().item()) < 5 * std / w.numel() ** 0.5, name
        assert torch.all(layer.bias == 0), name


def test_center_crop_offsets():
    x = torch.arange(2 * 9 * 12).reshape(2, 9, 12)
    torch.testing.assert_close(center_crop(x, 5, 6), x[:, 2:7, 3:9], rtol=0, atol=0)
    torch.testing.assert_close(center_crop(x, 4, 12), x[:, 2:6, :], rtol=0, atol=0)  # odd: extra row at the bottom
    with pytest.raises(ValueError, match="larger"):
        center_crop(x, 10, 12)


def test_forward_matches_hand_written_paper_expression():
    """The module equals a literal transcription of the paper's layers."""
    cfg = UNetConfig(in_channels=2, num_classes=3, base_channels=4, depth=2)
    model = ReferenceUNet(cfg).eval()
    x = torch.randn(2, 2, 44, 60)
    relu, F = torch.relu, nn.functional
    d0 = relu(model.down[0].conv2(relu(model.down[0].conv1(x))))
    d1 = relu(model.down[1].conv2(relu(model.down[1].conv1(F.max_pool2d(d0, 2)))))
    b = relu(model.bottom.conv2(relu(model.bottom.conv1(F.max_pool2d(d1, 2)))))
    # sizes: 44x60 -> d0 40x56 -> d1 16x24 -> bottom 4x8 -> up 8x16 -> dec 4x12 -> up 8x24
    u = model.up[0](b)
    assert u.shape[-2:] == (8, 16) and d1.shape[-2:] == (16, 24)
    u = relu(model.dec[0].conv2(relu(model.dec[0].conv1(torch.cat([d1[..., 4:12, 4:20], u], 1)))))
    u2 = model.up[1](u)
    assert u2.shape[-2:] == (8, 24) and d0.shape[-2:] == (40, 56)
    u2 = relu(model.dec[1].conv2(relu(model.dec[1].conv1(torch.cat([d0[..., 16:24, 16:40], u2], 1)))))
    expected = model.head(u2)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)


@pytest.mark.parametrize("dims, shape", [(2, (2, 2, 44, 60)), (3, (1, 2, 44, 44, 60))])
def test_split_merge_is_the_crop_concat_convolution(dims, shape):
    """The OpenVINO conversion's decoder form (two summed convolutions, no concatenation)
    gives the reference's values, in 2D and 3D (float64: only the order of the sums differs)."""
    model = ReferenceUNet(UNetConfig(in_channels=2, num_classes=3, base_channels=4, depth=2, spatial_dims=dims))
    model = model.double().eval()
    x = torch.randn(*shape, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model._layers(x, split_merge), model(x), rtol=1e-12, atol=1e-12)


def test_every_valid_size_runs_with_predicted_output():
    cfg = UNetConfig(in_channels=1, num_classes=2, base_channels=2, depth=3)
    model = ReferenceUNet(cfg).eval()
    sizes = geometry.valid_input_sizes(cfg.depth, max_size=220)
    assert sizes[0] == geometry.min_input_size(cfg.depth)
    with torch.no_grad():
        for s in sizes:
            out = model(torch.randn(1, 1, s, sizes[0]))
            assert out.shape[-2:] == (geometry.output_size(s, 3), geometry.output_size(sizes[0], 3)), s


def test_dropout_only_in_training():
    cfg = UNetConfig(base_channels=4, depth=1, dropout=0.5)
    model = ReferenceUNet(cfg)
    x = torch.randn(1, 1, 28, 28)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


def test_bad_input_channels_and_config():
    model = ReferenceUNet(UNetConfig(in_channels=2, base_channels=2, depth=1))
    with pytest.raises(ValueError, match=r"\(N, 2, H, W\)"):
        model(torch.randn(1, 3, 28, 28))
    with pytest.raises(ValueError, match=r"tile height .*got 29\. Nearest valid: 28, 30"):
        model(torch.randn(1, 2, 29, 28))
    with pytest.raises(ValueError, match="depth"):
        UNetConfig(depth=-1)
    with pytest.raises(ValueError, match="num_classes"):
        UNetConfig(num_classes=0)


def test_forward_flops_matches_layer_hooks():
    """forward_flops equals 2 * MACs counted from the real layers' output shapes."""
    from fastunet.model import forward_flops

    cfg = UNetConfig(in_channels=2, num_classes=3, base_channels=4, depth=2)
    model = ReferenceUNet(cfg).eval()
    total = 0

    def hook(module, inputs, output):
        nonlocal total
        k = module.weight.shape[-2] * module.weight.shape[-1]
        cin = inputs[0].shape[1]
        total += 2 * k * cin * output.shape[1] * output.shape[-2] * output.shape[-1] // (
            4 if isinstance(module, nn.ConvTranspose2d) else 1
        )

    for layer in model.conv_layers():
        layer.register_forward_hook(hook)
    with torch.no_grad():
        model(torch.randn(1, 2, 60, 44))
    assert forward_flops(cfg, 60, 44) == total


@pytest.mark.parametrize("config", [
    UNetConfig(depth=2, base_channels=4),
    UNetConfig(),
    UNetConfig(in_channels=3, num_classes=4, depth=1, base_channels=2),
    UNetConfig(spatial_dims=3, depth=2, base_channels=4, pools=((1, 2, 2), (2, 2, 2))),
])
def test_parameter_shapes_are_the_networks_without_building_it(config):
    """What a model file is checked against without torch: the network's names and shapes, in its order."""
    from fastunet.netconfig import parameter_count, parameter_shapes

    state = ReferenceUNet(config).state_dict()
    assert list(parameter_shapes(config).items()) == [(k, tuple(v.shape)) for k, v in state.items()]
    assert parameter_count(config) == count_parameters(ReferenceUNet(config))
