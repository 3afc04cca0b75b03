"""The mlharbor command line."""
