"""Moving files between nodes: fetching a manifest's chunks, placing and repairing replicas."""
