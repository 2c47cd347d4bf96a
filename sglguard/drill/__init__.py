"""Fault drills: inject a fault, see the catalog catch it within its bound, repair and page."""
