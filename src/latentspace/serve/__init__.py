"""The HTTP server: `latentspace serve` (see app.py for the routes)."""
