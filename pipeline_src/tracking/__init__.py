"""MLflow: the browsable mirror of the run records, and the switch that says whether a job tracks live."""
