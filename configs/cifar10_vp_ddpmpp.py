"""CIFAR-10, VP SDE, DDPM++ continuous."""
from configs import default_cifar10


def get_config():
    """Return the VP DDPM++ CIFAR-10 config."""
    config = default_cifar10.get_config()
    config.sde.kind = "vp"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.snr = 0.01
    config.data.centered = True
    config.model.name = "ncsnpp"
    config.model.scale_by_sigma = False
    config.model.ema_rate = 0.9999
    config.model.fir = False
    config.model.progressive_input = "none"
    config.model.embedding_type = "positional"
    config.subspace.cutoffs = (0.387, 0.446)
    return config
