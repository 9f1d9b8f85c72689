"""A byte-level iRobot Create 2 simulator: the robot side of the Open Interface over a small physical world.

``world`` (physics, pure), ``robot`` (the OI state machine, sans-I/O: command framing and execution,
modes, sleep and wake, the 15 ms tick), ``sensors`` (packet bytes from the world and the OI's registers),
``firmware`` (version, reset banner, battery lines), ``control`` (the control socket's robot operations),
``faults`` (line noise and pacing), ``server`` (pty / TCP / control socket around one robot), ``cli``
(``roomba-sim``). See docs/sim.md.
"""
