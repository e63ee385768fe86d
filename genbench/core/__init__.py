"""Shared plumbing: errors, atomic writes, hashing, registries, cache location."""
