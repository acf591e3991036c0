"""The memoria técnica and the service diagram: what a difusor hands to the institute."""
