"""LSUN Church 256x256, VE SDE, NCSN++ continuous (same network as CelebA-HQ-256)."""
from configs import default_celebahq


def get_config():
    """Return the LSUN Church VE NCSN++ config."""
    config = default_celebahq.get_config()
    config.data.dataset = "LSUN"
    config.data.category = "church_outdoor"
    config.sde.sigma_max = 380.0
    config.subspace.cutoffs = (0.434,)
    return config
