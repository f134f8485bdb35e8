"""Tiny offline config: 16x16 grayscale digits, small VE NCSN++ that trains on CPU in minutes."""
from configs import default_cifar10


def get_config():
    """Return the quick digits config."""
    config = default_cifar10.get_config()
    config.training.batch_size = 32
    config.training.n_iters = 1500
    config.training.n_jitted_steps = 2
    config.training.snapshot_freq = 500
    config.training.snapshot_freq_for_preemption = 200
    config.training.log_freq = 100
    config.sampling.num_steps = 100
    config.sampling.cond_langevin_steps = 0
    config.eval.batch_size = 64
    config.eval.num_samples = 256

    config.data.dataset = "digits"
    config.data.image_size = 16
    config.data.random_flip = False
    config.data.num_channels = 1

    config.sde.sigma_max = 10.0
    config.model.nf = 16
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (8,)
    config.model.attention_placement = "depth"  # one architecture at every level, so it can also be shared
    config.model.dropout = 0.0
    config.model.ema_rate = 0.99  # a 1,500-step run: a 0.999 average would still carry the first steps' weights
    config.model.fourier_scale = 16.0

    config.optim.warmup = 100
    config.optim.lr = 1e-3
    config.subspace.levels = 1
    config.subspace.cutoffs = (0.5,)
    config.subspace.train_level = -1  # both models, so snapshot grids come from the subspace sampler
    return config
