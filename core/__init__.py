"""The bottom layer: rules and formats every other package builds on, importing nothing of ours."""
