"""The Blender UI: one module per feature (generate, versions, review, retarget, batch, backend),
the preferences and the widgets they share. Each feature owns its classes and register()."""
