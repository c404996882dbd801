"""Command-line interface: Typer app (app.py), commands, and the Rich renderer (render.py)."""
