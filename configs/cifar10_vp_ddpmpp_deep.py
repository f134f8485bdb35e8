"""CIFAR-10, VP SDE, DDPM++ deep (8 residual blocks per resolution)."""
from configs import cifar10_vp_ddpmpp


def get_config():
    """Return the VP DDPM++ deep CIFAR-10 config."""
    config = cifar10_vp_ddpmpp.get_config()
    config.model.num_res_blocks = 8
    return config
