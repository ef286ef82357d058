"""NumPy reference of the training losses (torch-free, for tests and documentation).

The network outputs, per landmark i, a mean mu_i (2,) and log sigma_i, in units where the square
crop spans [-1, 1].  Paper eq. 1 (Gaussian negative log likelihood, circular 2D Gaussian, constant
terms dropped), normalised by the weights and averaged over the batch:

    L = mean_b  sum_i lambda_i ( log sigma_i^2 + ||x_i - mu_i||^2 / (2 sigma_i^2) ) / sum_i lambda_i

``tools/train_landmarks.py`` implements the same in torch (``gnll_loss``, ``l2_loss``).
"""
import numpy as np


def gnll(out, target, weight):
    """out (B, L, 3) = (mu x, mu y, log sigma); target (B, L, 2); weight (L,). Returns a float."""
    out, target, weight = np.asarray(out, float), np.asarray(target, float), np.asarray(weight, float)
    sigma2 = np.exp(2.0 * out[..., 2])
    d2 = ((target - out[..., :2]) ** 2).sum(-1)
    per = np.log(sigma2) + d2 / (2.0 * sigma2)
    return float(((per * weight).sum(-1) / weight.sum()).mean())


def l2(out, target, weight):
    """Plain weighted squared error on positions (the ablation's loss)."""
    out, target, weight = np.asarray(out, float), np.asarray(target, float), np.asarray(weight, float)
    d2 = ((target - out[..., :2]) ** 2).sum(-1)
    return float(((d2 * weight).sum(-1) / weight.sum()).mean())


def optimal_log_sigma(error):
    """log sigma minimising one landmark's GNLL term for a given error |x - mu|: sigma = |e| / sqrt(2)."""
    return np.log(np.abs(error) / np.sqrt(2.0))
