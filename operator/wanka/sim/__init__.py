"""wanka.sim."""
