"""Jinja2 templates of ``python -m harness new-method`` / ``new-task`` (a package so they ship as package data)."""
