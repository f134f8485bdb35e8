"""CIFAR-10, VP SDE, DDPM++ continuous (score_sde_pytorch configs/vp/cifar10_ddpmpp_continuous.py)."""
from configs import default_cifar10


def get_config():
    """Return the VP DDPM++ CIFAR-10 config."""
    config = default_cifar10.get_config()
    config.sde.kind = "vp"
    config.training.reduce_mean = True
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    config.sampling.eps = 1e-3  # score-SDE's VP sampling eps (the subspace reference has no VP sampler)
    config.sampling.cond_snr = 0.01  # reference README: --langevin_snr 0.01 for DDPM++
    config.data.centered = True
    config.model.name = "ncsnpp"
    config.model.scale_by_sigma = False
    config.model.ema_rate = 0.9999
    config.model.fir = False
    config.model.progressive_input = "none"
    config.model.embedding_type = "positional"
    # The published DDPM++ subspace networks were trained on scaler(pooled [0,1] images).
    config.subspace.scale_after_pooling = True
    config.subspace.cutoffs = (0.387,)  # DDPM++ 16x16 cutoff at 3e-3 (8x8: 0.446)
    return config
