"""wanka.controllers."""
