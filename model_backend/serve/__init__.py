"""The backend server: request validation and dispatch, the stdio transport (the add-on's own
process) and the TCP transport (serve --listen)."""
