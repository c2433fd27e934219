"""Measuring a trained model: every test protocol, diagnostic and figure of a run, from its model.pt."""
