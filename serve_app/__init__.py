"""The Ray Serve application: ingress, prototype shards, chain samplers, aggregation."""
