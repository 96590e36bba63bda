"""The bottom layer: generic helpers every other package may import. Nothing here imports the project."""
