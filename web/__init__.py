"""The release managers' web UI: server-rendered pages under /ui, served by the control plane."""
