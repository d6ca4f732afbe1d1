"""Out-of-distribution score: how far a window's simple statistics lie from the training data's.

A classifier answers every window, including ones unlike anything it was
trained on (a sensor strapped on upside down, a different activity, a
drifting offset, a noisy cable), often with high confidence. This module
gives a cheap second opinion: per channel, a window's mean and variance
(2 x channels features), and their Mahalanobis distance to the training
windows' features. The distance accounts for the features' correlations
(the channels of one sensor move together), so a window is far when its
*combination* of statistics is unusual, not only when one is.

The training statistics live in the spec's ``[ood]`` table: the features'
mean and scale and the inverse of their (shrunk) correlation matrix, plus a
threshold on the distance calibrated on held-out clean windows at a stated
false-alarm rate (:mod:`edge_infer.checks.calibrate`).

Why these features: both are linear in the sums of ``x`` and ``x**2`` (and
the square of the first), so at run time the distance is one matrix-vector
product over sums the input checks compute anyway
(:class:`edge_infer.checks.stats.WindowStats`, :meth:`OodModel.whitening`);
minimum and maximum would each cost a reduction along an axis, more than the
rest together. The range checks watch the extremes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import numpy as np

#: Feature names in the order the spec's vectors hold them; each has one entry per channel.
FEATURES = ("mean", "variance")
#: Shrinkage of the correlation matrix towards the identity: keeps its inverse well conditioned
#: when features are nearly collinear (two axes of one sensor, say).
DEFAULT_SHRINKAGE = 0.05


def window_features(windows: np.ndarray) -> np.ndarray:
    """Features of a batch of windows ``(n, window, channels)`` as ``(n, 2 * channels)`` float64.

    This is the reference definition (used to fit and to test); the run-time
    path computes the same numbers from :class:`~edge_infer.checks.stats.WindowStats`.
    """
    x = np.asarray(windows, dtype=np.float64)
    return np.concatenate([x.mean(axis=1), x.var(axis=1)], axis=1)


@dataclass
class OodModel:
    """The training windows' feature statistics and a distance threshold.

    ``mean`` and ``scale`` standardise the features; ``inv_cov`` is the
    inverse correlation matrix of the standardised features; ``threshold`` is
    the Mahalanobis distance above which a window is out of distribution
    (``inf`` until calibrated); ``false_alarm_rate`` is the rate it was
    calibrated at (for the record).
    """

    mean: np.ndarray
    scale: np.ndarray
    inv_cov: np.ndarray
    threshold: float = math.inf
    false_alarm_rate: Optional[float] = None

    @property
    def channels(self) -> int:
        return len(self.mean) // len(FEATURES)

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``features`` (or of one feature vector)."""
        z = (np.asarray(features, dtype=np.float64) - self.mean) / self.scale
        return np.sqrt(np.maximum(np.einsum("...i,ij,...j->...", z, self.inv_cov, z), 0.0))

    def whitening(self) -> Tuple[np.ndarray, np.ndarray]:
        """``(w, w0)`` with ``distance(f) = |w @ f - w0|``: standardisation and a Cholesky factor of ``inv_cov``.

        The guard folds ``w`` into its one matrix product over the window's
        sums. Raises ``numpy.linalg.LinAlgError`` if ``inv_cov`` is not positive definite.
        """
        upper = np.linalg.cholesky(self.inv_cov).T        # inv_cov = upper.T @ upper
        return upper / self.scale[None, :], upper @ (self.mean / self.scale)

    def to_table(self) -> Dict[str, Any]:
        """The spec's ``[ood]`` table (plain lists, ready for TOML)."""
        table: Dict[str, Any] = {"features": list(FEATURES)}
        if self.false_alarm_rate is not None:
            table["false_alarm_rate"] = self.false_alarm_rate
        table.update({
            "threshold": _sig(self.threshold, 6),
            "mean": [_sig(v) for v in self.mean],
            "scale": [_sig(v) for v in self.scale],
            "inv_cov": [[_sig(v) for v in row] for row in self.inv_cov],
        })
        return table


def fit(windows: np.ndarray, shrinkage: float = DEFAULT_SHRINKAGE) -> OodModel:
    """Feature statistics of clean training windows ``(n, window, channels)``; threshold still ``inf``.

    The correlation matrix is shrunk towards the identity by ``shrinkage``
    (Ledoit-Wolf style, fixed weight) before it is inverted; a feature with no
    spread at all gets scale 1 so it still standardises to a finite value.
    """
    features = window_features(windows)
    if len(features) < 2 * features.shape[1]:
        raise ValueError(f"{len(features)} windows are too few to fit {features.shape[1]} features; "
                         "give the calibration more clean data")
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale <= 0] = 1.0
    corr = np.corrcoef((features - mean) / scale, rowvar=False)
    corr = np.nan_to_num(corr)
    shrunk = (1.0 - shrinkage) * corr + shrinkage * np.eye(len(corr))
    inv_cov = np.linalg.inv(shrunk)
    return OodModel(mean=mean, scale=scale, inv_cov=(inv_cov + inv_cov.T) / 2.0)


def threshold_at(distances: np.ndarray, false_alarm_rate: float) -> float:
    """The distance that ``false_alarm_rate`` of held-out clean windows exceed (the (1 - rate) quantile)."""
    if not 0.0 < false_alarm_rate < 1.0:
        raise ValueError(f"the false-alarm rate must be between 0 and 1, not {false_alarm_rate}")
    return float(np.quantile(distances, 1.0 - false_alarm_rate, method="higher"))


def _sig(value: float, digits: int = 9) -> float:
    """``value`` rounded to ``digits`` significant digits: short in the spec, exact enough to score."""
    return float(f"{float(value):.{digits}g}")
