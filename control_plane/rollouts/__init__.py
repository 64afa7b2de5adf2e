"""Staged rollouts: the judgement of a candidate against its baseline at each step."""
