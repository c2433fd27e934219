"""What to run and the records runs leave: the params schema, the run table, preflight checks, run
records. Torch-free, so building the DAG stays cheap; of the package it imports only plumbing's code
hash (preflight keys its model check to the code that check runs)."""
