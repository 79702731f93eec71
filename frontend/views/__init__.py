"""Pages of the researcher's browser; each module is one area (pages, layers, pictures, downloads)."""
