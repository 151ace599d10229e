"""Caching: exact answers, verified semantic answers, in-flight coalescing, embedding reuse.

Stages (in pipeline order): ``ExactCacheStage`` → ``SemanticCacheStage`` →
``CoalesceStage``; each store sits behind a small interface with an embedded
(in-process) and a shared (Redis / pgvector) implementation. See docs/caching.md.
"""
