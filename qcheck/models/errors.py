"""The one error of the models room: a model that cannot be loaded here."""


class ModelNotAvailable(LookupError):
    """A model name that cannot be loaded here; the message names the model and the fix."""
