"""Everything that touches a file: day files (writer, journal, reader, check/repair) and NWB export."""
