"""CIFAR-10, sub-VP SDE, DDPM++ deep (8 residual blocks per resolution)."""
from configs import cifar10_subvp_ddpmpp


def get_config():
    """Return the sub-VP DDPM++ deep CIFAR-10 config."""
    config = cifar10_subvp_ddpmpp.get_config()
    config.model.num_res_blocks = 8
    config.training.n_iters = 950000  # reference: 950,001
    return config
