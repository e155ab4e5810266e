"""Without autotuning (FASTUNET_AUTOTUNE=0) every kernel launch is the config the performance
model ranks first, and nothing is benchmarked (no GPU: the launches of a whole forward and of
the loss are recorded instead of run, as they would be issued on a GPU)."""

import pytest
import torch
import triton
from triton.runtime import autotuner
from triton.runtime.interpreter import InterpretedFunction
from triton.runtime.jit import JITFunction

from fastunet import ReferenceUNet, UNetConfig
from fastunet.kernels import _utils, conv, conv_head, loss, rowconv, upconv


@pytest.fixture
def untuned(monkeypatch):
    """The GPU launch path with FASTUNET_AUTOTUNE=0, launches recorded and not run, every
    benchmark entry point counted."""
    launched, benchmarks = [], []
    monkeypatch.setattr(_utils, "INTERPRET", False)
    monkeypatch.setattr(_utils, "AUTOTUNE", False)
    monkeypatch.setattr(_utils, "shared_memory_limit", lambda device=None: 232448)  # an H200's

    def run(self, *args, grid, warmup, **kwargs):  # what the JIT function would launch
        launched.append((self, {**dict(zip(self.arg_names, args)), **kwargs}))

    monkeypatch.setattr(JITFunction, "run", run)
    monkeypatch.setattr(InterpretedFunction, "run", run)

    def count(name):
        def bench(*args, **kwargs):
            benchmarks.append(name)
            return [1.0, 1.0, 1.0]
        return bench

    monkeypatch.setattr(triton.testing, "do_bench", count("do_bench"))
    monkeypatch.setattr(autotuner.Autotuner, "_bench", count("Autotuner._bench"))
    monkeypatch.setattr(autotuner.Autotuner, "run", count("Autotuner.run"))
    return launched, benchmarks


def test_paper_network_forward_launches_the_models_first_configs_without_benchmarks(untuned):
    from fastunet.engine.fused import FusedUNet

    launched, benchmarks = untuned
    model = ReferenceUNet(UNetConfig()).eval()
    net = FusedUNet(model, device="cpu", dtype="bf16")
    net.predict(torch.zeros(2, 1, 572, 572), "labels")
    assert benchmarks == []
    names = [fn.__name__ for fn, _ in launched]
    assert names.count("conv_rowrun_kernel") == 16  # every 3x3 conv but the first and the last
    assert names.count("conv3x3_kernel") == 1  # the first layer: one input channel, K packed into one dot
    assert names.count("conv_head_rowrun_kernel") == 1 and names.count("upconv2x2_kernel") == 4
    for fn, a in launched:
        if fn.__name__ == "conv_rowrun_kernel":
            assert a["KD"] == 1
            x = a["a_desc"].base
            s = conv.ConvShape(x.shape[0], a["H_OUT"] + 2, a["W_OUT"] + 2, a["C_A"], a["C_B"], a["C_OUT"], a["POOL"],
                               a["WRITE_Y"])
            _same(a, conv.rowrun_configs_for(s)[0])
            assert a["a_desc"].block_shape == [a["BW"], a["BK"]] and a["w_desc"].block_shape == [a["BK"], a["BN"]]
        elif fn.__name__ == "conv_head_rowrun_kernel":
            x = a["x_desc"].base
            _same(a, conv_head.rowrun_configs_for(conv.ConvShape(x.shape[0], x.shape[1], x.shape[2], a["C_IN"], 0,
                                                                 a["C_MID"]))[0])
        elif fn.__name__ == "upconv2x2_kernel":
            _same(a, upconv.ranked_configs(a["M"], a["C_IN"], a["C_OUT"], torch.bfloat16, shared_memory=232448)[0])
    assert any(a["num_warps"] == 8 for _, a in launched)  # two consumer warp groups where the model says so


def _same(launched: dict, config) -> None:
    """The launch ran ``config``: its block sizes, warps and stages."""
    assert {k: launched[k] for k in config.kwargs} == config.kwargs
    assert (launched["num_warps"], launched["num_stages"]) == (config.num_warps, config.num_stages)


def test_loss_launches_its_large_default_block_without_benchmarks(untuned):
    launched, benchmarks = untuned
    logits = torch.randn(2, 2, 64, 64, requires_grad=True)
    target = torch.randint(0, 2, (2, 64, 64), dtype=torch.uint8)
    loss.weighted_softmax_ce(logits, target, torch.rand(2, 64, 64))
    assert benchmarks == []
    [args] = [a for fn, a in launched if fn.__name__ == "softmax_ce_fwd_kernel"]
    _same(args, loss.default_config(2, 64 * 64, 2))
    assert args["SIZE_CLASS"] == _utils.size_class(2 * 64 * 64)


def test_loss_default_block_is_large_and_predicted_near_copy_bandwidth():
    """P3's headline size (batch 128 of 388^2 bf16 logits, 2 classes, uint8 target, fp32 weight)."""
    default = loss.default_config(128, 388 * 388, 2)
    assert default.kwargs["BLOCK_P"] >= 1024
    assert loss.predict_fraction(default, 128, 388 * 388, 2, scenario="low") >= 0.8
    smallest = min(loss.get_autotune_config(), key=lambda c: c.kwargs["BLOCK_P"])
    assert loss.predict_fraction(smallest, 128, 388 * 388, 2, scenario="high") < 0.5  # v3's untuned default


def test_every_autotuned_kernel_keys_on_a_size_class():
    from fastunet.kernels import head

    kernels = (conv.conv3x3_kernel, rowconv.conv_rowrun_kernel, conv_head.conv3x3_head_kernel,
               conv_head.conv_head_rowrun_kernel, upconv.upconv2x2_kernel, head.head_kernel,
               loss.softmax_ce_fwd_kernel)
    for kernel in kernels:
        assert "SIZE_CLASS" in kernel.keys, kernel.fn.__name__


def test_3d_network_forward_launches_the_models_first_configs_without_benchmarks(untuned):
    from fastunet.engine.fused3d import FusedUNet3D
    from fastunet.kernels import conv3d, upconv3d

    launched, benchmarks = untuned
    model = ReferenceUNet(UNetConfig(base_channels=16, depth=2, spatial_dims=3, pools=((1, 2, 2), (2, 2, 2)))).eval()
    FusedUNet3D(model, device="cpu", dtype="bf16").predict(torch.zeros(1, 1, 42, 76, 76), "labels")
    assert benchmarks == []
    names = [fn.__name__ for fn, _ in launched]
    # the 3x3x3 convs on the 2D convs' row-run kernel (KD = 3) but the packed first layer; the head likewise
    assert names.count("conv_rowrun_kernel") == 8 and names.count("conv3x3x3_kernel") == 1
    assert names.count("conv_head_rowrun_kernel") == 1 and names.count("upconv3d_kernel") == 2
    pools = set()
    for fn, a in launched:
        if fn.__name__ == "conv3x3x3_kernel":
            assert a["K_PACKED"]
            shape = (1, a["D_OUT"], a["H_OUT"], a["W_OUT"])
            kept = conv3d.configs_for(torch.bfloat16, shared_memory=232448, packed=a["K_PACKED"])
            _same(a, conv3d.rank(kept, shape, a["C_A"] + a["C_B"], a["C_OUT"], 2, a["K_PACKED"])[0])
        elif fn.__name__ == "conv_rowrun_kernel":
            assert a["KD"] == 3
            s = conv.ConvShape(1, a["H_OUT"] + 2, a["W_OUT"] + 2, a["C_A"], a["C_B"], a["C_OUT"], a["POOL"],
                               a["WRITE_Y"], d_in=a["D_OUT"] + 2, pool_d=a["POOL_D"])
            _same(a, rowconv.ranked(s)[0])
            if a["POOL"]:
                pools.add(a["POOL_D"])
                assert a["RD"] == a["POOL_D"] or a["POOL_D"] == 1  # a 2x2x2 pool's windows in one tile
        elif fn.__name__ == "conv_head_rowrun_kernel":
            assert a["KD"] == 3
            s = conv.ConvShape(1, a["H_OUT"] + 2, a["W_OUT"] + 2, a["C_IN"], 0, a["C_MID"], d_in=a["D_OUT"] + 2)
            _same(a, conv_head.rowrun_configs_for(s)[0])
        elif fn.__name__ == "upconv3d_kernel":
            _same(a, upconv3d.ranked_configs(a["M"], a["C_IN"], 4 * a["FD"] * a["C_OUT"], torch.bfloat16, "tf32")[0])
    assert pools == {1, 2}
    for kernel in (conv3d.conv3x3x3_kernel, conv3d.conv3x3x3_head_kernel, upconv3d.upconv3d_kernel):
        assert "SIZE_CLASS" in kernel.keys, kernel.fn.__name__
