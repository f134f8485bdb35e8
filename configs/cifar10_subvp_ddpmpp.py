"""CIFAR-10, sub-VP SDE, DDPM++ continuous (score_sde_pytorch configs/subvp/cifar10_ddpmpp_continuous.py)."""
from configs import cifar10_vp_ddpmpp


def get_config():
    """Return the sub-VP DDPM++ CIFAR-10 config."""
    config = cifar10_vp_ddpmpp.get_config()
    config.sde.kind = "subvp"
    config.sampling.eps = 1e-5  # subspace_sample.py
    config.sampling.scale_langevin = False  # the reference's LangevinCorrector scales VP only, not sub-VP
    return config
