"""`python -m kun_ray ...` is the `kun-ray` command: the entrypoint of kun-ray's Ray jobs."""

import sys

from kun_ray.cli import main

sys.exit(main())
