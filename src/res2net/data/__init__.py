"""Data sets, readers and transforms (imports no model code)."""
