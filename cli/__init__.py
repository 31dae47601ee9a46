"""The `ospo` command line (Typer). Each command parses arguments, then calls one library function."""
