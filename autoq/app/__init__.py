"""Orchestration: what a CLI command does from start to end (prepare -> optimize -> publish for a
search; the cost-model commands). The only layer that may use every other."""
