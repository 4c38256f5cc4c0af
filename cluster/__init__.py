"""Ray clusters for RegionMIR: a local multi-node cluster (tests, development); launcher configs."""
