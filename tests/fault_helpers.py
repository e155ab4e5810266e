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


def small_net(depth: int = 2):
    """A tiny U-Net (base 4) with random biases, so that its output is not constant."""
    import torch

    from fastunet import ReferenceUNet, UNetConfig

    net = ReferenceUNet(UNetConfig(base_channels=4, depth=depth))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
                m.bias.normal_(0.0, 0.1)
    return net


def small_model(path, depth: int = 2) -> str:
    """:func:`small_net` saved with mean/std normalization; its path as a string."""
    from fastunet import Normalization, save_model

    return str(save_model(path, small_net(depth), Normalization(mode="meanstd")))
