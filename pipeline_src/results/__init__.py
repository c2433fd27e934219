"""From run records to findings: aggregate tables, verdicts, the audit and its pages, the report,
figures and progress. Reads records, never models."""
