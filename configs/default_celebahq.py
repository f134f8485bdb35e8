"""Base configuration for CelebA-HQ 256x256, VE NCSN++ (score-SDE values)."""
from configs import default_cifar10


def get_config():
    """Return the CelebA-HQ-256 base ConfigDict, built on the CIFAR-10 base."""
    config = default_cifar10.get_config()
    config.training.batch_size = 64
    config.training.n_iters = 2400000
    config.training.snapshot_freq = 50000
    config.training.snapshot_sampling = True
    config.sampling.snr = 0.075  # reference configs/default_lsun_configs.py (which the CelebA-HQ-256 config uses)
    config.sampling.num_steps = 2000  # model.num_scales
    config.sampling.cond_snr = 0.5  # reference README: --langevin_snr 0.5 for CelebA and LSUN
    config.eval.batch_size = 64
    config.eval.num_samples = 50000

    config.data.dataset = "CelebAHQ"
    config.data.image_size = 256
    config.data.random_flip = True
    config.data.centered = False
    config.data.uniform_dequantization = False
    config.data.num_channels = 3

    config.sde.sigma_max = 348.0
    config.model.dropout = 0.0
    config.model.ch_mult = (1, 1, 2, 2, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.progressive = "output_skip"
    config.model.progressive_input = "input_skip"
    config.model.progressive_combine = "sum"
    config.model.ema_rate = 0.999

    config.optim.lr = 2e-4
    config.subspace.levels = 1
    config.subspace.factor = 4  # one 64x64 subspace, as in the paper
    config.subspace.cutoffs = (0.405,)  # CelebA 64x64 cutoff at 3e-3 (paper, SPEC 4)
    return config
