"""Dispatch: technicians' files, matching and assignment, the visit."""
