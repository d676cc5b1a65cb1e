"""Orthogonal matching pursuit: a target vector as a sparse combination of table rows.

``omp(atoms_vd, target_d, k)`` picks, one at a time, the row most correlated
with what is left of the target, refits the coefficients of every picked row
by least squares, and stops after ``k`` rows or when the target is reproduced.
mergekit's tokensurgeon initialises new tokens this way (k = 64): the
coefficients found in one embedding space are applied to the same rows of
another (an untied LM head, or another model).

``omp_rows`` runs it for many targets at once: each greedy step is one
matrix product of the batch's residuals with the whole table.
"""

from __future__ import annotations

import numpy as np


def _normalised(atoms_vd: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(atoms_vd, axis=1, keepdims=True)
    return atoms_vd / np.maximum(norms, 1e-12)


def omp(atoms_vd: np.ndarray, target_d: np.ndarray, k: int, pool: np.ndarray | None = None) -> tuple:
    """(row indices, coefficients) with ``coefficients @ atoms_vd[indices] ≈ target_d``; at most ``k`` rows."""
    atoms = np.asarray(atoms_vd, np.float64)
    target = np.asarray(target_d, np.float64)
    pool = np.arange(len(atoms)) if pool is None else np.asarray(pool)
    unit = _normalised(atoms[pool])
    chosen: list[int] = []
    coef = np.zeros(0)
    residual = target.copy()
    scale = max(float(np.linalg.norm(target)), 1e-12)
    for _ in range(min(k, len(pool))):
        if np.linalg.norm(residual) <= 1e-7 * scale:
            break
        scores = np.abs(unit @ residual)
        scores[chosen] = -1.0
        chosen.append(int(np.argmax(scores)))
        basis = atoms[pool[chosen]]
        coef, *_ = np.linalg.lstsq(basis.T, target, rcond=None)
        residual = target - coef @ basis
    return pool[chosen], coef


def omp_rows(atoms_vd: np.ndarray, targets_nd: np.ndarray, k: int, batch: int = 256) -> tuple[list, list]:
    """OMP for every target: (indices [n] of arrays, coefficients [n] of arrays).

    Each greedy step scores the residuals of a batch of targets against the whole table in one matrix
    product; a target drops out once it is reproduced (for a zip-tie target: after its few pieces).
    """
    atoms = np.asarray(atoms_vd, np.float32)
    unit = _normalised(atoms)
    indices: list[np.ndarray] = []
    coefs: list[np.ndarray] = []
    for start in range(0, len(targets_nd), batch):
        targets = np.asarray(targets_nd[start : start + batch], np.float64)
        chosen: list[list[int]] = [[] for _ in targets]
        coef = [np.zeros(0) for _ in targets]
        residual = targets.copy()
        scale = np.maximum(np.linalg.norm(targets, axis=1), 1e-12)
        for _ in range(min(k, len(atoms))):
            active = np.nonzero(np.linalg.norm(residual, axis=1) > 1e-6 * scale)[0]
            if len(active) == 0:
                break
            scores = np.abs(residual[active].astype(np.float32) @ unit.T)
            for row, t in enumerate(active):
                scores[row, chosen[t]] = -1.0
                chosen[t].append(int(np.argmax(scores[row])))
                basis = atoms[chosen[t]].astype(np.float64)
                coef[t], *_ = np.linalg.lstsq(basis.T, targets[t], rcond=None)
                residual[t] = targets[t] - coef[t] @ basis
        indices += [np.asarray(c) for c in chosen]
        coefs += coef
    return indices, coefs
