"""Verdict: thresholds, the rules over a step's columns, the judge, spikes and the diagnosis."""
