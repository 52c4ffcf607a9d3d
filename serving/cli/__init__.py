"""The `tpuserve` command line; `main.py` holds the parser and each subcommand registers itself there."""
