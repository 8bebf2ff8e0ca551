import pytest
import torch
from torch import nn


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BN random affine parameters and running statistics measured on a random batch.

    Measured (not random) statistics keep activations O(1) as in a trained network, so a 1e-4 tolerance on
    logits is meaningful; random affine parameters make a wrong BN mapping show in the outputs.
    """
    generator = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.rand(bn.num_features, generator=generator) * 0.5 + 0.5)
            bn.bias.copy_(torch.rand(bn.num_features, generator=generator) - 0.5)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative average over the calibration pass
        model.train()
        model(torch.randn(4, 3, 64, 64, generator=generator))
        for bn in bns:
            bn.momentum = 0.1
    return model.eval()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
