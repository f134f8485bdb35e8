"""Base configuration for CIFAR-10 (score-SDE defaults); derived configs override it."""
import ml_collections


def get_config():
    """Return the CIFAR-10 base ConfigDict (VE NCSN++ continuous values as defaults)."""
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300001
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.eval_freq = 100
    training.snapshot_freq_for_preemption = 10000
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.continuous = True
    training.reduce_mean = False

    config.sampling = sampling = ml_collections.ConfigDict()
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.probability_flow = False
    sampling.snr = 0.16
    sampling.num_steps = 1000

    config.eval = evaluate = ml_collections.ConfigDict()
    # Local FID-Inception weights (pytorch-fid state_dict as .npz or .pth); see subspace_diffusion/metrics/inception.py.
    evaluate.inception_weights = ""
    evaluate.begin_ckpt = 9
    evaluate.end_ckpt = 26
    evaluate.batch_size = 1024
    evaluate.enable_sampling = True
    evaluate.num_samples = 50000
    evaluate.enable_loss = True
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3

    config.sde = sde = ml_collections.ConfigDict()
    sde.kind = "ve"
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0
    sde.beta_min = 0.1
    sde.beta_max = 20.0

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"
    model.sigma_min = sde.get_ref("sigma_min")
    model.sigma_max = sde.get_ref("sigma_max")
    model.num_scales = 1000
    model.beta_min = sde.get_ref("beta_min")
    model.beta_max = sde.get_ref("beta_max")
    model.dropout = 0.1
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.normalization = "GroupNorm"
    model.nonlinearity = "swish"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.attention_type = "ddpm"
    model.init_scale = 0.0
    model.conv_size = 3

    config.optim = optim = ml_collections.ConfigDict()
    optim.weight_decay = 0.0
    optim.optimizer = "Adam"
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.grad_clip = 1.0

    config.subspace = subspace = ml_collections.ConfigDict()
    subspace.kind = "pooling"
    subspace.levels = 2  # 32 -> 16 -> 8
    subspace.factor = 2
    subspace.cutoffs = (0.516, 0.558)
    subspace.stats_path = ""
    subspace.train_level = 0
    subspace.shared_params = False

    config.seed = 42
    return config
