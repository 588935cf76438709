"""Hostile inputs (rewards, configs, data, checkpoints, HF folders, templates): every new feature is checked against them."""
