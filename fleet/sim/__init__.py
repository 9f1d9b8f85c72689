"""The in-process fleet simulator behind ``roomba-fleet simulate`` (see docs/fleet-sim.md).

``link``: a ``SimRobot`` wired in memory to the real HAL client, stepped without threads; ``agent``: the
real agent on it; ``shard``: one spawned process running a slice of the fleet; ``faults``: the seeded
fault spec and plan (pure).
"""
