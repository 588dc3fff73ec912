"""The user-defined test networks' one initialisation: seeded, in eval mode, non-zero biases."""

from __future__ import annotations

import torch
import torch.nn as nn


def seeded_net(cls: type[nn.Module]) -> nn.Module:
    """`cls()` built under seed 0, in eval mode, every bias drawn from N(0, 0.1) so its Int32Bias integers are
    non-zero."""
    torch.manual_seed(0)
    net = cls().eval()
    with torch.no_grad():
        for m in net.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.normal_(0, 0.1)  # non-zero Int32Bias integers
    return net
