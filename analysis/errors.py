"""The one error type the analysis raises for bad input; the CLI prints it without a traceback."""


class AnalysisError(ValueError):
    """A value given to the analysis (argument, data, or MLflow selection) cannot be used."""
