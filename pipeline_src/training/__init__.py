"""The training job: the loop and multi-GPU launch. Only the CLI imports it."""
