"""One-off developer tools (measurements), not part of the library API."""
