"""Remediation kinds and their registry."""
