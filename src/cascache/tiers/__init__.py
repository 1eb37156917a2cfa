"""The tiers, in the order a request meets them: exact, semantic, (coalesce, prefix, route), write-back."""
