"""wanka.cluster."""
