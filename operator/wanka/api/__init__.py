"""wanka.api."""
