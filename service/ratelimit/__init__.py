"""Rate limiting: the GCRA limiter, its Redis store and its HTTP headers middleware."""
