"""The REST API: routes, the one status schema, request limits and error handlers."""
