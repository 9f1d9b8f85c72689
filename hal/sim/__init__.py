"""roomba-agent: hal/sim."""
