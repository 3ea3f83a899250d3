"""The command line: the only floor that prints, exits or configures logging."""
