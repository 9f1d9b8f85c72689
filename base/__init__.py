"""What every product of roomba-agent stands on, and that depends on nothing else of ours.

Structured logs (:mod:`base.logs`), retry timing (:mod:`base.backoff`), process helpers
(:mod:`base.process`), test helpers shipped with the package (:mod:`base.testing`), and the one version
number of the distribution.
"""

__version__ = "0.1.0"
