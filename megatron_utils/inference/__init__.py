"""Scoring new media with a trained run, and what scoring returns."""
