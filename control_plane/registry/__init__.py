"""Models, versions, engines and GPU pools."""
