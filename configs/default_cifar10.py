"""Base configuration for CIFAR-10 (score-SDE defaults); derived configs override it."""
import ml_collections


def get_config():
    """Return the CIFAR-10 base ConfigDict (VE NCSN++ continuous values as defaults)."""
    config = ml_collections.ConfigDict()

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128
    training.n_iters = 1300000
    training.n_jitted_steps = 5  # optimiser steps per compiled call (lax.scan)
    training.eps = 1e-5  # smallest training time of the full-space model
    training.keep_checkpoints = 100  # archive checkpoints kept (the preemption slot keeps 1)
    training.snapshot_samples = 64  # samples in each snapshot grid
    training.snapshot_freq = 50000
    training.log_freq = 50
    training.snapshot_freq_for_preemption = 10000
    training.snapshot_sampling = True
    training.likelihood_weighting = False
    training.reduce_mean = False
    # Class-conditional models (model.num_classes > 0): the share of training examples whose label is replaced by
    # 'no label', so the one network is also the unconditional model that classifier-free guidance needs.
    training.label_dropout = 0.1

    # Sources: score_sde_pytorch configs/ve/cifar10_ncsnpp_continuous.py (predictor, corrector, snr, num_scales)
    # and subspace-diffusion's subspace_sample.py (eps, conditional Langevin) and README (cond_snr for CIFAR-10 VE).
    config.sampling = sampling = ml_collections.ConfigDict()
    # pc (predictor-corrector), ode (adaptive Dormand-Prince), ode_heun (EDM's Heun) or dpm_solver++ (2M)
    sampling.method = "pc"
    sampling.predictor = "reverse_diffusion"
    sampling.corrector = "langevin"
    sampling.n_steps_each = 1
    sampling.noise_removal = True
    sampling.snr = 0.16
    sampling.num_steps = 1000  # model.num_scales of the reference: its stages share these N points
    sampling.eps = 1e-5  # subspace_sample.py samples down to 1e-5 (score-SDE: 1e-5 VE, 1e-3 VP / sub-VP)
    sampling.cond_langevin_steps = 2  # --langevin_steps: conditional Langevin steps on the new directions after a lift
    sampling.cond_snr = 0.22  # --langevin_snr for CIFAR-10 NCSN++
    # VP / sub-VP Langevin step times alpha_i as score-SDE; the reference leaves sub-VP's unscaled. No effect for VE.
    sampling.scale_langevin = True
    # ode_heun / dpm_solver++: the effective NFE of a sample (sum of n_level / d per network call), how it is
    # split over the stages ('log_sigma': equal steps per unit of log sigma; 'cost': equal budget per unit),
    # and Heun's EDM time discretisation.
    sampling.nfe_budget = 35.0
    sampling.budget_rule = "log_sigma"
    sampling.rho = 7.0
    # Classifier-free guidance w of a class-conditional model: (1 + w) s(x, t, y) - w s(x, t, no label); 0 samples
    # the class-conditional model itself; w > 0 evaluates the network twice per call (effective NFE doubles).
    sampling.guidance = 0.0

    config.eval = evaluate = ml_collections.ConfigDict()
    # Local FID-Inception weights (pytorch-fid state_dict as .npz or .pth); see subspace_diffusion/metrics/inception.py.
    evaluate.inception_weights = ""
    # Checkpoints evaluated: archived steps s (step values, not checkpoint indices) with begin_ckpt <= s <=
    # end_ckpt, inclusive; -1 means the latest archived step (so -1, -1 evaluates the latest one only).
    evaluate.begin_ckpt = -1
    evaluate.end_ckpt = -1
    # Workdir of each level's run, index = level ("" = --workdir); empty: every level from --workdir (a run
    # trained with subspace.train_level=-1). Levels in another workdir than level 0 use its latest checkpoint.
    evaluate.level_workdirs = ()
    evaluate.use_subspace = True  # sample with the subspace chain; False (or subspace.levels=0): full space only
    evaluate.folder = "eval"  # outputs in <workdir>/<folder>/step_<step>/; another name keeps other settings apart
    evaluate.batch_size = 1024
    evaluate.enable_sampling = True
    evaluate.num_samples = 50000
    evaluate.enable_bpd = False
    evaluate.bpd_dataset = "test"
    evaluate.bpd_num_repeats = 5  # dequantisation draws per example (score-SDE)
    evaluate.bpd_num_examples = 0  # cap on bits/dim examples; 0 = the whole split
    evaluate.ode_rtol = 1e-5  # probability-flow ODE tolerances (bits/dim and sampling.method='ode')
    evaluate.ode_atol = 1e-5
    evaluate.ode_max_steps = 4096  # the adaptive solver's step limit: a solve that reaches it is refused
    evaluate.likelihood_eps = 1e-5  # the bits/dim ODE starts here for every SDE, as score-SDE's likelihood.py
    # Reference statistics for FID / KID and the other Frechet distances: "" computes them into the workdir
    # (ref_stats_<dataset>_<image_size>_<content id>.npz, as --mode=fid_stats does); a path is read, never written.
    evaluate.ref_stats_path = ""
    evaluate.ref_split = "train"
    # --mode=inpaint / --mode=colorize: images of cond_input_dir; cond_mask is the region to fill in
    # ('left_half', 'right_half', 'top_half', 'bottom_half', 'center', 'random' or a PNG, white = known).
    evaluate.cond_input_dir = ""
    evaluate.cond_mask = "left_half"
    evaluate.cond_mask_fraction = 0.5  # share of missing pixels for cond_mask='random'
    # Their outputs: <workdir>/<cond_folder>/ ("" = the mode's name, inpaint or colorize); a folder that holds an
    # earlier run's results is never overwritten: name another one.
    evaluate.cond_folder = ""
    # Class-conditional models: the classes requested, sample i getting labels[i % len(labels)]; () = every class
    # in turn (0, 1, ..., num_classes - 1, 0, ...), so each gets an equal share.
    evaluate.labels = ()

    config.data = data = ml_collections.ConfigDict()
    data.dataset = "CIFAR10"  # digits, folder, mnist, fashion_mnist, cifar10, celebahq, lsun, ffhq (any case, '-', '_')
    data.image_size = 32
    data.random_flip = True
    data.centered = False
    data.uniform_dequantization = False
    data.num_channels = 3
    data.padding = 0  # zero pixels added on each side, inside image_size (2 brings 28 px MNIST-style sets to 32)
    data.data_dir = ""  # 'folder': the folder of images (searched recursively); mnist, fashion_mnist: of the IDX files
    data.tfds_data_dir = ""  # TFDS datasets: where `tfds build` prepared them ("" = TFDS's default)
    data.tfrecords_path = ""  # score-SDE TFRecords (a glob) for ffhq, and for celebahq instead of TFDS
    data.category = ""  # dataset 'lsun': the category, e.g. church_outdoor

    config.sde = sde = ml_collections.ConfigDict()
    sde.kind = "ve"
    sde.sigma_min = 0.01
    sde.sigma_max = 50.0
    sde.beta_min = 0.1
    sde.beta_max = 20.0

    config.model = model = ml_collections.ConfigDict()
    model.name = "ncsnpp"  # or "ddpmpp": the same module, DDPM++ being NCSN++ under its settings
    model.dropout = 0.1
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    model.scale_by_sigma = True
    model.ema_rate = 0.999
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    # 'resolution': attention where the input's pixel size is in attn_resolutions, as the reference builds a
    # level's network; 'depth': at the full-space network's depths at every level (one shared network).
    model.attention_placement = "resolution"
    model.resamp_with_conv = True
    model.conditional = True
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.skip_rescale = True
    model.resblock_type = "biggan"
    model.progressive = "none"
    model.progressive_input = "residual"
    model.progressive_combine = "sum"
    model.init_scale = 0.0
    # Mixed precision: networks compute in bfloat16 with float32 parameters, EMA, optimiser state, loss and
    # SDE; `dtype` in training, `sample_dtype` when sampling or measuring likelihoods (float32 unless asked).
    model.dtype = "float32"
    model.sample_dtype = "float32"
    model.remat = False  # recompute residual blocks' activations in the backward pass: less memory, more time
    # Vector levels (subspace.kind='pca') have no image layout: a residual MLP with NCSN++'s time embedding.
    model.mlp_width = 512
    model.mlp_blocks = 4
    # Classes of a class-conditional model (labelled data: digits, mnist, fashion_mnist, cifar10): every level's
    # network adds a class embedding (and one for 'no label') to its time embedding. 0: unconditional.
    model.num_classes = 0

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
    # The reference samples with one subspace: 16x16 here (levels=1, factor=2); the 8x8 one is levels=1,
    # factor=4, cutoffs=(0.558,); both in a chain: levels=2, cutoffs=(0.516, 0.558).
    subspace.levels = 1
    subspace.factor = 2
    subspace.cutoffs = (0.516,)  # orthogonal Fisher divergence 3e-3 cutoff of the NCSN++ model (paper, SPEC 4)
    subspace.stats_path = ""  # "": <workdir>/subspace_stats_<chain id>.npz, one file per chain
    subspace.fit_examples = 10000  # training images that PCA / patch-PCA subspaces are fitted on
    subspace.train_level = 0  # level whose network is trained: 0 = full space, k, or -1 = every level
    subspace.train_from_cutoff = True  # level k > 0 trains on t ~ U(t_k, T); False: U(training.eps, T)
    subspace.shared_params = False
    # Level networks see scaler(D^k u) (pool [0,1] images, then scale) as in the reference, instead of D^k scaler(u):
    # differs only for centred data, where the published DDPM++ subspace networks need it.
    subspace.scale_after_pooling = False
    # --mode=cutoffs (SPEC section 4): orthogonal Fisher divergence of the full-space model on a grid of
    # cutoff_times_num times in [eps, T] over cutoff_num_examples training images; cutoff where D < cutoff_threshold.
    subspace.cutoff_times_num = 21
    subspace.cutoff_num_examples = 1024
    subspace.cutoff_batch_size = 64  # images per compiled call (each is evaluated at every time of the grid)
    subspace.cutoff_threshold = 3e-3
    # Class-conditional models: lift a labelled sample with its class's piece statistics (mu, sigma_perp), measured
    # with the training labels by --mode=subspace_stats (or on first use), instead of the whole data set's.
    subspace.class_stats = False

    config.seed = 42
    return config
