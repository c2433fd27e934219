"""What to run and the records runs leave: the params schema, the run table, preflight checks, run
records, and the code hashes of the rules. Torch-free, so building the DAG stays cheap; it imports
no other stage."""
