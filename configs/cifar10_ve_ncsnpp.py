"""CIFAR-10, VE SDE, NCSN++ continuous (score-SDE defaults)."""
from configs import default_cifar10


def get_config():
    """Return the VE NCSN++ CIFAR-10 config."""
    return default_cifar10.get_config()
