"""Who changed what, when, before and after."""
