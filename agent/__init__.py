"""roomba-agent: agent."""
