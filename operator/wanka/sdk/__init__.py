"""wanka.sdk."""
