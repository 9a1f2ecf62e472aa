"""The test suite (a package, so modules share helpers through ``tests.contract`` and ``tests.refstyle``)."""
