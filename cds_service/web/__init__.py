"""The Flask layer: app factory, views, authentication middleware, request context, OpenAPI, metrics, logs."""
