"""The project's speedometer: ``python -m benchmarks`` prints a table of side-by-side figures."""
