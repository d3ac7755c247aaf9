"""The model the signal-driven invalidation is tested with."""

from __future__ import annotations

from django.db import models


class Article(models.Model):
    """A row whose saves and deletes must invalidate what was cached from it."""

    title = models.CharField(max_length=200)

    class Meta:
        app_label = "strata_djapp"
