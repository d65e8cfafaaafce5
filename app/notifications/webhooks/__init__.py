"""Webhooks: the catalog's change events sent to other systems, signed (Standard Webhooks),
retried for days, in order per product, only to public addresses."""
