"""AWS IoT Jobs on the robot: job documents (:mod:`.document`), the device MQTT API (:mod:`.protocol`),
the durable journal (:mod:`.journal`), running commands and handlers (:mod:`.runner`) and the agent's own
operations (:mod:`.builtins`). The feature that ties them to the agent is :mod:`agent.features.jobs`."""
