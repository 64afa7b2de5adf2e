"""Traffic policies, their immutable revisions, and the routing snapshot."""
