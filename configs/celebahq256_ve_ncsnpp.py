"""CelebA-HQ 256x256, VE SDE, NCSN++ continuous."""
from configs import default_celebahq


def get_config():
    """Return the CelebA-HQ-256 VE NCSN++ config."""
    return default_celebahq.get_config()
