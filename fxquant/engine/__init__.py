"""Execution engine the search runs on: the accuracy oracle, graph evaluation with caching, process groups."""
