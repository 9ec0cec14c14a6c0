"""wanka.agent."""
