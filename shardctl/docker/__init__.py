"""The one seam to the Docker SDK: clients per engine, the records that cross the seam, container
specs, compose."""
