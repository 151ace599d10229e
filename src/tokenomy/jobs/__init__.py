"""Async jobs, batches and the durable queue behind them.

- ``queue.JobQueue``: the queue contract (at-least-once, visibility timeout,
  delayed retries, dead letters), with ``sql_queue.SQLQueue`` (embedded: SQLite,
  or PostgreSQL) and ``redis_queue.RedisStreamQueue`` (shared: Redis Streams
  consumer groups) side by side.
- ``store.JobStore``: jobs, files and batches in SQL (the ledger's database by default).
- ``worker.JobWorker``: takes jobs off the queue and runs them through the same
  pipeline as real-time calls (``tokenomy worker``, or inside ``tokenomy serve``).
- ``batch_runner`` (``batch_files``, ``batch_local``, ``batch_passthrough`` over
  ``batch_upstream``): a batch run by the gateway, or passed through to OpenAI's
  Batch API or Anthropic's Message Batches.
- ``owner``: files, batches and jobs belong to the virtual key that created them.
"""
