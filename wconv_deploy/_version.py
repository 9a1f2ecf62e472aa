"""The package version, in a leaf module: anything that stamps provenance imports it from here."""

__version__ = "0.1.0"
