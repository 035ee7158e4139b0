"""The `anygpt` command line."""
