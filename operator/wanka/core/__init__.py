"""wanka.core."""
