"""Evidence of an incident, kept before a restart destroys it: diagnostics bundles."""

from sglguard.diag.capture import Attachment, Diagnostics, attachment

__all__ = ["Attachment", "Diagnostics", "attachment"]
