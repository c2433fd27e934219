"""What only the Snakemake process and its job start-up use, apart from the stages: the code hash each
rule carries (code_hash.py), the locks that keep two runs out of one results folder (locks.py) and the
start-up worker that runs jobs in forked children (worker/).

Nothing of the package is imported here: Python runs this file before worker/, whose client every job
starts, and the worker must hold no module of the package when it forks (an edited module is the code
that runs)."""
