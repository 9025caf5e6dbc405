"""Drills: a schedule of rollouts and faults over a fleet, recorded, checked, reported."""
