"""Helpers of tests/test_faults.py that worker processes must import (so not in the test module)."""

import os
import signal

import numpy as np


class KillOnce:
    """An in-memory array whose first read of plane ``z`` in a process other than the one that
    made it kills the reading process (SIGKILL), once: ``marker`` records that it happened."""

    def __init__(self, data: np.ndarray, marker, z: int):
        self.data = data
        self.marker = str(marker)
        self.z = int(z)
        self.owner = os.getpid()
        self.shape, self.dtype, self.ndim = data.shape, data.dtype, data.ndim
        self.chunksize = (1, *data.shape[1:])

    def compute(self):  # dask-like: fastunet keeps it as it is (no np.asarray)
        return self.data

    def __getitem__(self, index):
        z = index[0]
        hit = (z.start or 0) <= self.z < (self.data.shape[0] if z.stop is None else z.stop) if isinstance(
            z, slice) else z == self.z
        if hit and os.getpid() != self.owner and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return self.data[index]


def small_net(depth: int = 2, num_classes: int = 2):
    """A tiny U-Net (base 4) with random biases, so that its output is not constant."""
    import torch

    from fastunet import ReferenceUNet, UNetConfig

    net = ReferenceUNet(UNetConfig(base_channels=4, depth=depth, num_classes=num_classes))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return net


def balanced_net(image=None, depth: int = 2, seed: int = 0, num_classes: int = 2):
    """:func:`small_net` with weights drawn from ``seed`` (not from the test's seed) and, for
    two classes, its head bias set so that about half of ``image`` (2D, normalized here by its
    mean and standard deviation; default: a standard normal noise image) is foreground: a
    network whose output is neither empty nor full whatever the test's inputs."""
    import numpy as np
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = small_net(depth, num_classes).eval()
    if num_classes != 2:
        return net
    if image is None:
        x = np.random.default_rng(0).normal(size=(92, 92))
    else:
        x = np.asarray(image, np.float64)
        x = (x - x.mean()) / (x.std() or 1.0)
    with torch.no_grad():
        scores = net(torch.from_numpy(x.astype(np.float32))[None, None])
        net.head.bias[1] -= float(torch.median(scores[:, 1] - scores[:, 0]))
    return net


def small_model(path, depth: int = 2) -> str:
    """:func:`small_net` saved with mean/std normalization; its path as a string."""
    from fastunet import Normalization, save_model

    return str(save_model(path, small_net(depth), Normalization(mode="meanstd")))
