"""Data: readers, layouts, preparation into 2D slices, splits, the torch Dataset."""
