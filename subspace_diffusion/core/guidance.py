"""Classifier-free guidance (Ho & Salimans 2022): the score of a class-conditional network steered to its labels.

A class-conditional network trained with its labels dropped some of the time (`training.label_dropout`) is also
the unconditional model: its extra 'no label' class, numbered num_classes. With guidance w >= 0 a sampler runs
on the score (1 + w) s(x, t, y) - w s(x, t, no label): w = 0 is the class-conditional score, a larger w sharpens
each class at the cost of diversity. The two evaluations run as one network call on 2B rows, so every guided
score call costs two network evaluations per sample (`evaluations`).
"""
from typing import Callable

import jax.numpy as jnp
import numpy as np


def evaluations(w: float) -> int:
    """Network evaluations per sample and score call under guidance w: 2 when the unconditional score is needed."""
    return 2 if w else 1


def guided(score: Callable, labels, w: float, num_classes: int) -> Callable:
    """score(x (B, ...), t (B,)) for class labels (B,) int (num_classes = no label) under guidance w, from the
    class-conditional score(x, t, y): (1 + w) s(x, t, y) - w s(x, t, no label), one call on 2B rows."""
    if not w:
        return lambda x, t: score(x, t, labels)

    def fn(x, t):
        b = x.shape[0]
        both = score(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                     jnp.concatenate([labels, jnp.full_like(labels, num_classes)]))
        return (1 + w) * both[:b] - w * both[b:]

    return fn


def check_labels(labels, batch_size: int, num_classes: int) -> np.ndarray:
    """Class labels of a batch as int32 (B,), each in [0, num_classes] (num_classes = no label); ValueError else."""
    if not num_classes:
        raise ValueError('class labels given to an unconditional model (config.model.num_classes=0): train a '
                         'class-conditional one (model.num_classes > 0) or sample without labels')
    array = np.asarray(labels)
    if array.shape != (batch_size,) or array.dtype.kind not in 'iu':
        raise ValueError(f'class labels must be {batch_size} integers (one per sample), got {array.dtype} '
                         f'shape {array.shape}')
    if array.size and not 0 <= array.min() <= array.max() <= num_classes:
        raise ValueError(f'class label {array.min() if array.min() < 0 else array.max()} is out of range: the model '
                         f'has classes 0..{num_classes - 1} ({num_classes} = no label)')
    return array.astype(np.int32)
