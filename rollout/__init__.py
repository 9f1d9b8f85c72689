"""Staged rollouts of a release to robots, with a brake that watches robot health, not only job statuses.

:mod:`rollout.policy` is pure (option specs, the per-robot classifier, the decision); :mod:`rollout.controller`
is the I/O shell over the local cloud's control plane (AWS IoT Jobs) and the robots' shadows and presence.
``roomba-fleet rollout`` (``fleet/rollout.py``) is the command line on top. See docs/rollouts.md.
"""
