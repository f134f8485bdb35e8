"""main.py --mode=fid_stats: the reference statistics of split eval.ref_split for FID / KID and the other distances."""
from subspace_diffusion.evaluation.quality import Scorer
from subspace_diffusion.run.settings import Settings


def fid_stats(settings: Settings, workdir) -> dict:
    """Write the reference statistics ({name}_mu, {name}_sigma, KID features) of every feature set that applies."""
    return Scorer(settings, workdir).write_reference()
