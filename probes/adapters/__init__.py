"""Bridges to external training frameworks; each imports its framework itself, so the core never needs one."""
