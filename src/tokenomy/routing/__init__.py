"""Routing: rule and learned routers, cascades, fallbacks, retries and circuit breakers."""
