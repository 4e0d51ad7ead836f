"""The plugin surface: the registries and discovery, the bases a method, tuner or task implements, their
options and capability words, which plugin runs on which task (``support``), the core's own range calibrators
and the conformance kit. Plugins import these through :mod:`harness.api`."""
