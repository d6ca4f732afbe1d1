"""Input checks: is a window fit to be shown to the model?

Per frame (timestamps, repeated samples) and per window (non-finite values,
physical range, saturation, stuck channels, too few fresh samples, distance
from the training data), each failing check is a reason code from
:mod:`edge_infer.decide.reasons` and the spec says, per reason, whether the window
falls back or is decided by the model and flagged. Submodules:

* :mod:`.config` - the spec's ``[checks]``, ``[checks.policy]`` and ``[ood]`` tables, validated at load;
* :mod:`.stats` - the reductions over a window that all checks share, into buffers allocated once;
* :mod:`.guard` - :class:`~.guard.InputGuard`, what the decision loop calls;
* :mod:`.calibrate` - fit the tables on clean training data and write them into a spec.

This package imports nothing at package level, so the spec parser can import
:mod:`.config` without pulling in the decision loop.
"""
