"""Leaderboard export and figures: reads result records only."""
