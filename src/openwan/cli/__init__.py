"""The ``openwan`` command line: argument parsing and error reporting only; all logic lives in the library."""
