"""What the tests that start the model servers share: how long a server may take to start.

A loaded 2-core machine can take well over a minute to import KServe and load a model, so the
tests give the servers more than ``fraud serve``'s own default; this only bounds a start that
would otherwise hang.
"""

#: Seconds a predictor or transformer gets to be ready (``StackConfig.startup_timeout_s``,
#: ``fraud serve --startup-timeout``, ``ServerProcess.wait_ready``).
STARTUP_TIMEOUT_S = 180.0
