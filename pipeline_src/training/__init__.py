"""The training job: the loop, evaluation of a trained model, and multi-GPU launch. Only the CLI
imports it."""
