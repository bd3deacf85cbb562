"""The HTTP edge: dependency aliases, error handlers, middleware, envelope, metrics, audit."""
