"""`python -m model_backend.train ...`: rebuild the demo model (see `python -m model_backend.train -h`)."""
from .cli import main

raise SystemExit(main())
