"""CDN purge adapters: one per provider, over aiohttp, with batching, backoff and signing."""
