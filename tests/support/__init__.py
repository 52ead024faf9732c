"""Helpers shared by the test suites: model bundles and server processes."""
