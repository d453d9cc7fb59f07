"""The backend clients, plain Python (no bpy): one Backend interface (base.py), the local
subprocess (local.py) and a remote server (remote.py), the registry above both, and the
subprocess jobs that set up the backend environment and convert a model."""
