"""The backend server: request validation and dispatch and the stdio transport (server.py, the add-on's own
process), and the HTTP transport for a studio (http.py, with access.py for tokens and gate.py for turns)."""
