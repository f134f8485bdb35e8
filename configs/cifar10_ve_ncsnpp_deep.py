"""CIFAR-10, VE SDE, NCSN++ deep (8 residual blocks per resolution)."""
from configs import default_cifar10


def get_config():
    """Return the VE NCSN++ deep CIFAR-10 config."""
    config = default_cifar10.get_config()
    config.model.num_res_blocks = 8
    config.training.n_iters = 950000  # reference: 950,001
    config.subspace.cutoffs = (0.515,)  # 8x8: 0.557
    return config
