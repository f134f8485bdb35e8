"""CIFAR-10, sub-VP SDE, DDPM++ continuous."""
from configs import cifar10_vp_ddpmpp


def get_config():
    """Return the sub-VP DDPM++ CIFAR-10 config."""
    config = cifar10_vp_ddpmpp.get_config()
    config.sde.kind = "subvp"
    return config
