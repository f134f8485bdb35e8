"""Order of convergence of the fixed-step ODE samplers on the exactly solvable Gaussian case (SPEC section 5).

    python benchmarks/ode_convergence.py

x0 ~ N(m, Sigma) on 4x4x1 with a 2-level pooling chain whose pieces are exactly Gaussian, exact level scores.
For Heun and DPM-Solver++(2M), VE / VP / sub-VP, full space and the chain (cutoffs 0.1, 0.2): the RMS
distance of 4,000 samples at each effective-NFE budget to the same solver's samples at budget 2,000 from
the same prior draw and lift noise (the discretisation error, without Monte-Carlo error), its slope
against the budget, and the covariance error of the budget-2,000 samples against Sigma (Monte-Carlo error
about 0.05 at 4,000 samples). Results: benchmarks/results/ode_convergence.json.
"""
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'tests'))
from gaussian_case import make_case  # noqa: E402
from results import save_result  # noqa: E402
from subspace_diffusion.core.sde import SDE  # noqa: E402
from subspace_diffusion.core.subspaces import PoolingChain  # noqa: E402

BUDGETS = (8, 16, 32, 64, 128)
N = 4000


def main():
    case = make_case(PoolingChain((4, 4, 1), 2), [0.3, 0.6])
    rows = []
    for kind in ('ve', 'vp', 'subvp'):
        sde = SDE(kind)
        for space, subspace in (('full', None), ('2-level chain', case.subspace((0.1, 0.2)))):
            for method in ('ode_heun', 'dpm_solver++'):
                reference = case.ode_samples(sde, method, 2000, subspace, N)
                errors = [float(np.sqrt(np.mean((case.ode_samples(sde, method, b, subspace, N) - reference) ** 2)))
                          for b in BUDGETS]
                slope = float(np.polyfit(np.log(BUDGETS[1:]), np.log(errors[1:]), 1)[0])
                cov_err = float(np.linalg.norm(np.cov(reference.T) - case.cov) / np.linalg.norm(case.cov))
                rows.append({'sde': kind, 'space': space, 'method': method, 'budgets': BUDGETS, 'rms_error': errors,
                             'slope_16_to_128': slope, 'reference_cov_error': cov_err})
                print(f'{kind} {space} {method}: slope {slope:.2f}, errors {["%.1e" % e for e in errors]}, '
                      f'covariance error of the fine solve {cov_err:.3f}', flush=True)
    save_result('ode_convergence', {'command': 'python benchmarks/ode_convergence.py', 'samples': N,
                                    'cutoffs': (0.1, 0.2), 'rows': rows})


if __name__ == '__main__':
    main()
