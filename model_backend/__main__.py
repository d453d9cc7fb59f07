"""`python -m model_backend ...` is `irg-motion ...` (the Blender add-on starts the backend this way)."""
from .cli import main

raise SystemExit(main())
