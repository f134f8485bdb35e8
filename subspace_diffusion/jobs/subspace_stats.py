"""main.py --mode=subspace_stats: the chain's piece statistics on the training set, written to the workdir."""
from subspace_diffusion.core.subspaces import PieceStats
from subspace_diffusion.run import statistics
from subspace_diffusion.run.experiment import build_chain
from subspace_diffusion.run.settings import Settings


def subspace_stats(settings: Settings, workdir) -> PieceStats:
    """Measure mu_j, sigma_perp_j and RMS distances of the chain on the training set; write .npz and .json."""
    if not settings.subspace.levels:
        raise ValueError('--mode=subspace_stats needs a chain: set config.subspace.levels >= 1')
    if settings.subspace.stats_path:  # the user's file is read, never written (outputs stay in the workdir)
        raise ValueError(f'--mode=subspace_stats measures into the workdir, and config.subspace.stats_path='
                         f'{settings.subspace.stats_path} is only ever read: leave it empty for this mode')
    return statistics.measure(settings, build_chain(settings), workdir)
