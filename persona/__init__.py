"""PERSONA: a personalised, animatable whole-body 3D Gaussian avatar from one photo.

Sub-packages: ``body`` (parametric bodies, skinning), ``ops`` (pure tensor functions),
``avatar`` (nn.Modules), ``render`` (Gaussian renderers), ``losses`` (loss terms and the weight
table), ``data`` (subjects, sampler, data module), ``callbacks`` and ``export``.
"""

__version__ = "0.1.0"
