"""Platform layer: read ELF / PE / Mach-O binaries and locate an interpreter's libpython."""
