"""Spiders: ``aozora`` (Aozora Bunko) and ``web`` (seed URLs and sitemaps)."""
