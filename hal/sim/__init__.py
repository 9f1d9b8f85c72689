"""A byte-level iRobot Create 2 simulator: the robot side of the Open Interface over a small physical world.

``world`` (physics, pure), ``robot`` (the OI state machine, sans-I/O), ``faults`` (line noise and pacing),
``server`` (pty / TCP / control socket around one robot), ``cli`` (``roomba-sim``). See docs/sim.md.
"""
