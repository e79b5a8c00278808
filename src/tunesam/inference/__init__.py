"""Prediction on new scans, written back in the scans' own geometry."""
