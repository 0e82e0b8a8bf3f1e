"""The command line: dispatch, shared options, generate (and --from), jobs and plan."""
