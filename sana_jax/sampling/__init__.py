"""Sampling: prompt encoding, flow samplers and the text-to-image pipeline."""
