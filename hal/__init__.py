"""Hardware abstraction layer over the iRobot Roomba / Create 2 Open Interface (OI).

Tables (``packets``, ``opcodes``, ``models``, ``quirks``), the sans-I/O ``codec`` (``encode``, ``decode``,
``streaming``), the links (``transport``: the ``Transport`` protocol, pyserial's ports, a cable in memory),
the ``Robot`` that owns one link (``robot``; ``Robot.step`` is one turn of its reader) and its sans-I/O
parts (``state``: frames into a ``RobotState``; ``odometry``: the pose; ``link``: link counters and timers;
``mode``: holding the OI mode; ``events``: what listeners hear), ``probe`` (the
``roomba-agent probe`` command), ``testing`` (``RobotPair``: the Robot and the simulator back to back) and
``sim`` (the robot side: a byte-level Create 2 simulator).
"""
