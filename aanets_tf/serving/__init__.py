"""Serving: the SavedModel and its request limits, the client, and TF Serving's
`models.config`."""
