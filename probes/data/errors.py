"""The one error type every dataset reader raises for bad input."""
from probes.errors import UserError


class DatasetFormatError(UserError, ValueError):
    """A dataset file is missing, laid out wrongly, or holds a value the format does not allow.

    The message always names the file (and the line or field when there is one) and what was expected,
    so a user can fix the data without reading the reader's code.
    """

    def __init__(self, path, problem, line=None, field=None, expected=None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.problem = problem
        self.expected = expected
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        message = f"{where}: {problem}"
        if expected is not None:
            message += f" (expected {expected})"
        super().__init__(message)
