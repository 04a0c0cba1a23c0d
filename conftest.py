"""Root conftest: pytester for the plugin's own tests (qcheck's plugin itself comes from its
`pytest11` entry point), and hypothesis profiles: `dev` (default, fast) and `ci` (derandomized,
more examples)."""

import os

from hypothesis import HealthCheck, settings

pytest_plugins = ["pytester"]

# deadline=None: the first call of a torch op can take ~1 s.
settings.register_profile("dev", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=100, deadline=None, derandomize=True, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
