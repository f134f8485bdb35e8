"""Network -> score conversion with score-SDE's continuous-time conventions.

VE: the network is fed labels sigma(t) (NCSN++ takes log sigma inside its Fourier embedding)
and, with model.scale_by_sigma, already divides its output by sigma, so the output is the
score. VP / sub-VP: labels are 999 t and the score is -output / sigma(t). A class-conditional network also
takes class labels y (B,) int (its `num_classes` = no label); y None leaves them out (no label).
"""
from subspace_diffusion.core.sde import bcast


def get_model_fn(model, params, train=False, dropout_rng=None):
    """Return f(x (B,H,W,C), labels (B,)[, class labels y (B,)]) -> (B,H,W,C) raw network output."""
    variables = params if "params" in params else {"params": params}

    def model_fn(x, labels, y=None):
        rngs = {"dropout": dropout_rng} if train and dropout_rng is not None else {}
        classes = {} if y is None else {"y": y}
        return model.apply(variables, x, labels, train=train, rngs=rngs, **classes)

    return model_fn


def get_score_fn(model, sde, params, train=False, dropout_rng=None):
    """Return score(x (B,H,W,C), t (B,)[, y (B,)]) -> (B,H,W,C) for the given SDE; jit/scan friendly."""
    model_fn = get_model_fn(model, params, train=train, dropout_rng=dropout_rng)

    if sde.kind == "ve":
        def score_fn(x, t, y=None):
            return model_fn(x, sde.sigma(t), y)
    else:
        def score_fn(x, t, y=None):
            out = model_fn(x, t * 999.0, y)
            return -out / bcast(sde.sigma(t), out)

    return score_fn
