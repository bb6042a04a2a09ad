"""The manager and its stages: admission (inits), polling, reads, outcomes, bulk connection,
the fleet (registration, leases, adoption), the standard budget for your own calls,
configuration from the environment."""
