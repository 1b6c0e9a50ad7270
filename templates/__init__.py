"""Jinja2 templates, shipped as package data of hoodypipe.templates."""
