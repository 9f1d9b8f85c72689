"""AWS IoT device shadow rules, pure: documents, the shadow engine, topic builders, the thing-name rule.

Shared by the robot agent (deltas, what to report) and the local cloud (what to answer). No I/O, no clock:
callers pass ``now`` and get documents and effects back.
"""
