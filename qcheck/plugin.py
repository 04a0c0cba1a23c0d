"""qcheck's pytest plugin: options, markers, fixtures, collection narrowing. Kept thin."""
