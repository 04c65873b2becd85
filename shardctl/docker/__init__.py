"""The one seam to the Docker SDK: engines, container specs, compose."""
