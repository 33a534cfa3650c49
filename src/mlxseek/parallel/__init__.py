"""Placements across machines on `mx.distributed`: pipeline and expert parallelism, rank start-up,
deadlines and the launcher."""
